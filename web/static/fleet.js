// Central console: every station's cameras, states and alarms, and live video relayed through the console.
// Plain JavaScript, no dependencies. Data comes from /api/fleet/stream (Server-Sent Events); live video
// is WHEP through /api/stations/{station}/cameras/{camera}/whep, media straight from the station.
"use strict";

const MAX_TILES = 4;
const { t, label } = window.nvrI18n;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function since(iso) { return iso ? window.nvrI18n.ago(iso) : ""; }


/** The page: station cards, the live wall, the merged alarm list. */
class Fleet {
  constructor() {
    this.stations = new Map();   // id -> station JSON from /api/fleet
    this.players = {};           // "station/camera" -> LivePlayer
    this.tiles = new Map();      // "station/camera" -> tile element
    this.alarmTimer = null;
  }

  start() {
    const tick = () => {
      const clock = document.getElementById("clock");
      const now = Date.now();
      clock.textContent = window.nvrI18n.time(now);
      clock.dateTime = window.nvrI18n.isoUtc(now);
      clock.title = window.nvrI18n.hover(now);
    };
    tick();
    setInterval(tick, 1000);
    this.follow();
    this.refreshAlarms();
    setInterval(() => this.refreshAlarms(), 5000);
    window.addEventListener("pagehide", () => Object.values(this.players).forEach((p) => p.stop()));
  }

  follow() {
    const connection = document.getElementById("connection");
    const source = new EventSource("/api/fleet/stream");
    source.addEventListener("fleet", (e) => {
      const fleet = JSON.parse(e.data);
      document.getElementById("console-name").textContent = fleet.console.name;
      this.stations = new Map(fleet.stations.map((s) => [s.id, s]));
      this.render();
      connection.textContent = "";
      connection.classList.remove("bad");
    });
    source.addEventListener("station", (e) => {
      const station = JSON.parse(e.data);
      this.stations.set(station.id, station);
      this.render();
      this.scheduleAlarms();
    });
    const onAlarm = () => this.scheduleAlarms();
    source.addEventListener("alarm.opened", onAlarm);
    source.addEventListener("alarm.closed", onAlarm);
    source.onerror = () => {
      connection.textContent = t("fleet.connection_lost");
      connection.classList.add("bad");
      if (source.readyState === EventSource.CLOSED) setTimeout(() => this.follow(), 3000);
    };
  }

  scheduleAlarms() {
    if (this.alarmTimer) return;
    this.alarmTimer = setTimeout(() => { this.alarmTimer = null; this.refreshAlarms(); }, 200);
  }

  async refreshAlarms() {
    try {
      const response = await fetch("/api/fleet/alarms", { cache: "no-store" });
      if (response.status === 401) { location.href = "/login?next=/"; return; }
      this.renderAlarms((await response.json()).alarms);
    } catch (_) { /* the event stream shows the connection state */ }
  }

  render() {
    const nav = document.getElementById("stations");
    nav.replaceChildren(...[...this.stations.values()].map((s) => this.stationCard(s)));
    const stations = [...this.stations.values()];
    const reachable = stations.filter((s) => s.reachable).length;
    const cams = stations.reduce((n, s) => n + s.counts.cameras, 0);
    const online = stations.reduce((n, s) => n + s.counts.online, 0);
    const summary = document.getElementById("summary");
    summary.replaceChildren();
    const part = (text, value, bad) => {
      const span = el("span", bad ? "bad" : "");
      const [before, after] = text.split("{n}");  // the number in bold where the catalogue puts it
      span.append(before || "", el("b", "", window.nvrI18n.number(value)), after || "");
      summary.append(span);
    };
    part(t("fleet.summary_stations", { total: stations.length }), reachable, reachable < stations.length);
    part(t("fleet.summary_cameras", { total: cams }), online, online < cams);
    for (const [key, tile] of this.tiles) this.updateTile(key, tile);
  }

  stationCard(station) {
    const card = el("section", "station-card");
    card.dataset.stationId = station.id;
    card.dataset.state = station.state;
    const head = el("header");
    head.append(el("span", "station-name", station.name));
    const counts = el("span", "station-counts");
    counts.append(t("fleet.station_online", { online: station.counts.online, total: station.counts.cameras }));
    if (station.counts.alarms_open) {
      counts.append(t("list.separator"), el("span", station.counts.critical_open ? "bad" : "",
        t("fleet.station_alarms", { n: station.counts.alarms_open })));
    }
    const archive = station.archive;
    if (archive && archive.enabled && archive.backlog) {
      // The off-site archive's backlog (issue 19): segments waiting, and since when.
      const b = archive.backlog;
      const late = archive.state !== "ok" || (b.alarm_after_seconds && b.oldest_age_seconds > b.alarm_after_seconds);
      const backlog = t("fleet.archive_backlog", { segments: b.segments, mb: Math.round(b.bytes / 1e6),
        oldest: window.nvrI18n.duration(b.oldest_age_seconds) });
      counts.append(t("list.separator"), el("span", late ? "bad" : "", archive.state !== "ok" && archive.reason
        ? t("fleet.archive_backlog_reason", { backlog, reason: archive.reason }) : backlog));
    }
    head.append(counts, el("span", "badge", label("state", station.state)));
    head.lastChild.dataset.state = station.reachable ? "online" : station.state === "connecting" ? "connecting" : "offline";
    card.append(head);
    const reason = el("div", "station-reason", t("fleet.station_reason", {
      reason: station.reason ? label("link", station.reason) : "", message: station.message || "", ago: since(station.since) }));
    card.append(reason);
    const list = el("ul", "camera-list");
    for (const camera of station.cameras) {
      const li = el("li");
      li.dataset.state = station.reachable ? camera.state : "unknown";
      li.dataset.cameraId = camera.id;
      if (camera.zone === "holding_cell") li.classList.add("cell");
      li.append(el("span", "dot"), el("span", "name", camera.name),
        el("span", "state", station.reachable ? label("state", camera.state)
          : t("fleet.state_stale", { state: label("state", camera.state) })));
      const key = `${station.id}/${camera.id}`;
      const button = el("button", "live-button", t("fleet.live"));
      button.type = "button";
      button.setAttribute("aria-pressed", this.tiles.has(key) ? "true" : "false");
      button.addEventListener("click", () => this.toggleLive(station.id, camera.id));
      li.append(button);
      if (camera.open_alarms.length) {
        const alarms = el("span", "alarms");
        for (const a of camera.open_alarms) alarms.append(el("span", a.severity, label("alarm", a.type)));
        li.append(alarms);
      }
      list.append(li);
    }
    card.append(list);
    return card;
  }

  renderAlarms(alarms) {
    document.getElementById("alarm-count").textContent = window.nvrI18n.number(alarms.length);
    const list = document.getElementById("alarms");
    if (!alarms.length) { list.replaceChildren(el("li", "empty", t("console.no_open_alarms"))); return; }
    list.replaceChildren(...alarms.map((a) => {
      const li = el("li", a.severity);
      if (a.type === "station_unreachable") li.classList.add("unreachable");
      li.dataset.station = a.station;
      li.dataset.type = a.type;
      const where = a.camera ? t("fleet.where", { station: a.station_name, camera: a.camera_name || a.camera }) : a.station_name;
      li.append(el("span", "where", where), a.details && a.details.message
        ? t("fleet.alarm_message", { alarm: label("alarm", a.type), message: a.details.message }) : label("alarm", a.type));
      li.append(el("span", "when", t("fleet.alarm_when", { severity: label("severity", a.severity), ago: since(a.opened_at) })));
      return li;
    }));
  }

  camera(stationId, cameraId) {
    const station = this.stations.get(stationId);
    return station ? station.cameras.find((c) => c.id === cameraId) : undefined;
  }

  toggleLive(stationId, cameraId) {
    const key = `${stationId}/${cameraId}`;
    if (this.tiles.has(key)) this.closeLive(key); else this.openLive(stationId, cameraId);
    this.render();
  }

  openLive(stationId, cameraId) {
    const key = `${stationId}/${cameraId}`;
    if (this.tiles.has(key)) return this.players[key];
    if (this.tiles.size >= MAX_TILES) this.closeLive(this.tiles.keys().next().value);
    const tile = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
    tile.dataset.key = key;
    tile.dataset.station = stationId;
    tile.dataset.cameraId = cameraId;
    tile.querySelector(".tile-close").addEventListener("click", () => { this.closeLive(key); this.render(); });
    const wall = document.getElementById("wall");
    wall.append(tile);
    wall.classList.add("has-tiles");
    const title = tile.querySelector(".tile-message-title");
    const detail = tile.querySelector(".tile-message-detail");
    const url = `/api/stations/${encodeURIComponent(stationId)}/cameras/${encodeURIComponent(cameraId)}/whep`;
    const player = new LivePlayer(url, tile.querySelector("video"), (kind, why) => {
      tile.classList.toggle("show-message", kind !== "playing");
      title.textContent = kind === "playing" ? "" : kind === "error" ? t("console.live_unavailable")
        : kind === "connecting" ? t("fleet.connecting") : t("fleet.reconnecting");
      detail.textContent = why || "";
    });
    this.players[key] = player;
    this.tiles.set(key, tile);
    this.updateTile(key, tile);
    player.connect();
    return player;
  }

  closeLive(key) {
    const tile = this.tiles.get(key);
    if (!tile) return;
    this.players[key].stop();
    delete this.players[key];
    this.tiles.delete(key);
    tile.remove();
    if (!this.tiles.size) document.getElementById("wall").classList.remove("has-tiles");
  }

  updateTile(key, tile) {
    const [stationId, cameraId] = key.split("/");
    const station = this.stations.get(stationId);
    const camera = this.camera(stationId, cameraId);
    tile.querySelector(".tile-name").textContent = t("fleet.where", { station: station ? station.name : stationId,
      camera: camera ? camera.name : cameraId });
    tile.querySelector(".tile-zone").textContent = camera ? label("zone", camera.zone) : "";
    tile.classList.toggle("cell", !!camera && camera.zone === "holding_cell");
    const state = station && !station.reachable ? "unreachable" : camera ? camera.state : "unknown";
    const badge = tile.querySelector(".badge");
    badge.textContent = label("state", state);
    badge.dataset.state = state === "unreachable" ? "offline" : state;
    const alarms = tile.querySelector(".tile-alarms");
    alarms.replaceChildren(...(camera ? camera.open_alarms : []).map((a) => el("li", a.severity, label("alarm", a.type))));
    tile.classList.toggle("alarm", !!camera && camera.open_alarms.length > 0);
  }
}

window.nvrFleet = new Fleet();
window.nvrFleet.start();
