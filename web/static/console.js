// Monitoring console: a wall of live cameras over WHEP, their states, and open alarms.
// Plain JavaScript, no dependencies: station networks are closed.
"use strict";

const { t } = window.nvrI18n;
const POLL_MS = 2000;          // camera states and alarms
const LAYOUTS = { 1: [1, 1], 4: [2, 2], 9: [3, 3], 16: [4, 4] };
const { label } = window.nvrI18n;
const zoneName = (zone) => label("zone", zone);
const reasonText = (reason) => (reason ? label("reason", reason) : "");
const stateText = (state) => label("state", state);

/** The page: layout, pagination, tiles, health panel. */
class Console {
  constructor() {
    this.cameras = [];               // from /api/cameras, in configured order
    this.alarms = [];                // open alarms, when the daemon offers them
    this.players = {};               // camera id -> LivePlayer, for the tiles on screen
    this.tiles = {};                 // camera id -> tile element
    const params = new URLSearchParams(location.search);
    this.layout = Number(params.get("layout") || localStorage.getItem("nvr.layout") || 4);
    if (!LAYOUTS[this.layout]) this.layout = 4;
    this.page = 0;
    this.wall = document.getElementById("wall");
    this.template = document.getElementById("tile-template");
    if (localStorage.getItem("nvr.health") === "hidden") document.body.classList.add("no-health");
    this.bindControls();
    this.tick();
    setInterval(() => this.tick(), 1000);
  }

  bindControls() {
    document.querySelectorAll("#layouts button").forEach((button) => {
      button.addEventListener("click", () => this.setLayout(Number(button.dataset.layout)));
    });
    document.getElementById("prev").addEventListener("click", () => this.setPage(this.page - 1));
    document.getElementById("next").addEventListener("click", () => this.setPage(this.page + 1));
    const toggle = document.getElementById("toggle-health");
    toggle.setAttribute("aria-pressed", String(!document.body.classList.contains("no-health")));
    toggle.addEventListener("click", () => {
      const hidden = document.body.classList.toggle("no-health");
      toggle.setAttribute("aria-pressed", String(!hidden));
      localStorage.setItem("nvr.health", hidden ? "hidden" : "shown");
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") document.querySelectorAll(".tile.expanded").forEach((t) => t.classList.remove("expanded"));
      if (event.key === "PageDown" || event.key === "ArrowRight") this.setPage(this.page + 1);
      if (event.key === "PageUp" || event.key === "ArrowLeft") this.setPage(this.page - 1);
    });
    window.addEventListener("pagehide", () => Object.values(this.players).forEach((p) => p.stop()));
  }

  async start() {
    fetch("/healthz").then((r) => r.json()).then((h) => {
      document.getElementById("station").textContent = h.station || "";
      document.title = t("console.page_title", { station: h.station });
    }).catch(() => {});
    await this.poll();
    setInterval(() => this.poll(), POLL_MS);
  }

  async poll() {
    const status = document.getElementById("connection");
    try {
      const response = await fetch("/api/cameras", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const cameras = await response.json();
      const changed = cameras.map((c) => c.id).join() !== this.cameras.map((c) => c.id).join();
      this.cameras = cameras;
      status.textContent = t("console.updated", { time: window.nvrI18n.time(Date.now()) });
      status.classList.remove("bad");
      if (changed) this.render(); else this.update();
    } catch (error) {
      status.textContent = t("console.unreachable", { detail: error.message });
      status.classList.add("bad");
    }
    this.pollAlarms();
  }

  // Alarms come from /api/events when the daemon has it; until then the areas stay empty.
  async pollAlarms() {
    try {
      const response = await fetch("/api/events?open=true", { cache: "no-store" });
      if (!response.ok) return;
      const body = await response.json();
      const items = Array.isArray(body) ? body : (body.events || []);
      this.alarms = items.filter((a) => a.open !== false && !a.closed_at);
      this.renderAlarms();
    } catch (_error) { /* no alarm source yet */ }
  }

  pages() { return Math.max(1, Math.ceil(this.cameras.length / this.layout)); }

  setLayout(layout) {
    if (!LAYOUTS[layout]) return;
    const first = this.page * this.layout;
    this.layout = layout;
    localStorage.setItem("nvr.layout", String(layout));
    this.page = Math.floor(first / layout);
    this.render();
  }

  setPage(page) {
    const clamped = Math.max(0, Math.min(this.pages() - 1, page));
    if (clamped === this.page) return;
    this.page = clamped;
    this.render();
  }

  render() {
    this.page = Math.min(this.page, this.pages() - 1);
    const [cols, rows] = LAYOUTS[this.layout];
    this.wall.style.setProperty("--cols", String(cols));
    this.wall.style.setProperty("--rows", String(rows));
    document.querySelectorAll("#layouts button").forEach((b) => {
      b.setAttribute("aria-pressed", String(Number(b.dataset.layout) === this.layout));
    });
    const visible = this.cameras.slice(this.page * this.layout, (this.page + 1) * this.layout);
    const keep = new Set(visible.map((c) => c.id));
    for (const [id, player] of Object.entries(this.players)) {
      if (!keep.has(id)) { player.stop(); delete this.players[id]; delete this.tiles[id]; }
    }
    this.wall.replaceChildren();
    for (const camera of visible) this.wall.appendChild(this.tiles[camera.id] || this.makeTile(camera));
    for (let i = visible.length; i < this.layout && this.cameras.length > this.layout; i++) {
      const empty = document.createElement("div");
      empty.className = "tile empty";
      this.wall.appendChild(empty);
    }
    if (!this.cameras.length) {
      const empty = document.createElement("div");
      empty.className = "tile empty show-message";
      const message = document.createElement("div");
      message.className = "tile-message";
      const title = document.createElement("span");
      title.className = "tile-message-title";
      title.textContent = t("console.no_cameras");
      message.append(title);
      empty.append(message);
      this.wall.appendChild(empty);
    }
    document.getElementById("page").textContent = t("console.page", { page: this.page + 1, pages: this.pages() });
    document.getElementById("prev").disabled = this.page === 0;
    document.getElementById("next").disabled = this.page >= this.pages() - 1;
    this.update();
  }

  makeTile(camera) {
    const tile = this.template.content.firstElementChild.cloneNode(true);
    tile.dataset.cameraId = camera.id;
    tile.classList.toggle("cell", camera.zone === "holding_cell");
    tile.querySelector(".tile-name").textContent = camera.name;
    tile.querySelector(".tile-zone").textContent = zoneName(camera.zone);
    const video = tile.querySelector(".tile-video");
    tile.addEventListener("click", () => toggleFullscreen(tile));
    tile.addEventListener("keydown", (event) => { if (event.key === "Enter") toggleFullscreen(tile); });
    const audio = tile.querySelector(".tile-audio");
    audio.addEventListener("click", (event) => {
      event.stopPropagation();
      video.muted = !video.muted;
      audio.setAttribute("aria-pressed", String(!video.muted));
      audio.title = video.muted ? t("console.unmute") : t("console.mute");
      audio.setAttribute("aria-label", audio.title);
    });
    const url = `/api/cameras/${encodeURIComponent(camera.id)}/whep`;
    const player = new LivePlayer(url, video, (kind, detail) => this.playerStatus(tile, kind, detail));
    this.players[camera.id] = player;
    this.tiles[camera.id] = tile;
    player.start();
    return tile;
  }

  playerStatus(tile, kind, detail) {
    tile.dataset.player = kind;
    if (kind === "playing") tile.classList.toggle("has-audio", this.players[tile.dataset.cameraId]?.hasAudio || false);
    if (kind === "error") tile.dataset.playerError = detail; else delete tile.dataset.playerError;
    this.updateTile(tile, this.cameras.find((c) => c.id === tile.dataset.cameraId));
  }

  update() {
    for (const camera of this.cameras) {
      const tile = this.tiles[camera.id];
      if (tile) this.updateTile(tile, camera);
      this.players[camera.id]?.setCameraOnline(camera.state === "online");
    }
    this.renderHealth();
    this.renderAlarms();
  }

  updateTile(tile, camera) {
    if (!camera) return;
    const state = camera.state;
    tile.dataset.state = state;
    tile.classList.toggle("recording", Boolean(camera.recording));
    const badge = tile.querySelector(".badge");
    badge.dataset.state = state;
    badge.textContent = state === "offline" && camera.state_reason
      ? t("console.offline_because", { reason: reasonText(camera.state_reason) }) : stateText(state);
    const live = camera.live || camera;
    const info = [];
    if (live.width && live.height) info.push(t("console.resolution", { width: live.width, height: live.height }));
    if (live.fps) info.push(t("console.fps", { fps: Math.round(live.fps) }));
    tile.querySelector(".tile-info").textContent = info.join(t("list.separator"));
    let title = "";
    let detail = "";
    if (state === "offline") {
      title = t("console.no_signal");
      detail = camera.last_packet_at
        ? t("console.no_signal_detail", { reason: reasonText(camera.state_reason), ago: since(camera.last_packet_at) })
        : reasonText(camera.state_reason);
    } else if (tile.dataset.playerError) {
      title = t("console.live_unavailable");
      detail = tile.dataset.playerError;
    } else if (state === "connecting") {
      title = t("console.connecting");
    } else if (tile.dataset.player !== "playing") {
      title = t("console.starting");
    }
    tile.classList.toggle("show-message", Boolean(title));
    tile.querySelector(".tile-message-title").textContent = title;
    tile.querySelector(".tile-message-detail").textContent = detail;
  }

  renderHealth() {
    const list = document.getElementById("camera-list");
    list.replaceChildren(...this.cameras.map((camera) => {
      const item = document.createElement("li");
      item.dataset.state = camera.state;
      item.dataset.cameraId = camera.id;
      item.classList.toggle("cell", camera.zone === "holding_cell");
      const dot = document.createElement("span");
      dot.className = "dot";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = camera.name;
      name.title = t("console.camera_zone", { name: camera.name, zone: zoneName(camera.zone) });
      const state = document.createElement("span");
      state.className = "state";
      state.textContent = camera.state === "offline" && camera.state_reason ? reasonText(camera.state_reason) : stateText(camera.state);
      item.append(dot, name, state);
      item.addEventListener("click", () => this.show(camera.id));
      return item;
    }));
    document.getElementById("camera-count").textContent = String(this.cameras.length);
    const online = this.cameras.filter((c) => c.state === "online").length;
    const offline = this.cameras.filter((c) => c.state === "offline").length;
    const recording = this.cameras.filter((c) => c.recording).length;
    document.getElementById("summary").replaceChildren(
      summaryPart("console.summary_online", online), summaryPart("console.summary_offline", offline, offline > 0),
      summaryPart("console.summary_recording", recording), summaryPart("console.summary_alarms", this.alarms.length));
  }

  renderAlarms() {
    const byCamera = {};
    for (const alarm of this.alarms) (byCamera[alarmCamera(alarm)] ||= []).push(alarm);
    for (const [id, tile] of Object.entries(this.tiles)) {
      const alarms = byCamera[id] || [];
      tile.classList.toggle("alarm", alarms.length > 0);
      tile.querySelector(".tile-alarms").replaceChildren(...alarms.slice(0, 4).map((a) => {
        const item = document.createElement("li");
        item.textContent = alarmLabel(a);
        item.classList.toggle("critical", a.severity === "critical");
        return item;
      }));
    }
    const list = document.getElementById("alarms");
    document.getElementById("alarm-count").textContent = String(this.alarms.length);
    if (!this.alarms.length) {
      const empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = t("console.no_open_alarms");
      list.replaceChildren(empty);
      return;
    }
    const names = Object.fromEntries(this.cameras.map((c) => [c.id, c.name]));
    list.replaceChildren(...this.alarms.map((a) => {
      const item = document.createElement("li");
      item.classList.toggle("critical", a.severity === "critical");
      const camera = alarmCamera(a);
      item.textContent = t("console.alarm_line", { where: names[camera] || camera || t("console.station"), alarm: alarmLabel(a) });
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = a.opened_at ? t("console.since", { ago: since(a.opened_at) }) : "";
      item.appendChild(when);
      if (camera) item.addEventListener("click", () => this.show(camera));
      return item;
    }));
  }

  show(cameraId) {
    const index = this.cameras.findIndex((c) => c.id === cameraId);
    if (index < 0) return;
    this.setPage(Math.floor(index / this.layout));
    this.tiles[cameraId]?.focus();
  }

  tick() {
    const clock = document.getElementById("clock");
    const now = Date.now();
    clock.textContent = window.nvrI18n.time(now);
    clock.dateTime = window.nvrI18n.isoUtc(now);
    clock.title = window.nvrI18n.hover(now);
  }
}

// Alarms as /api/events returns them: {id, camera, type, severity, opened_at, closed_at, open, details}.
function alarmCamera(alarm) { return alarm.camera ?? alarm.camera_id ?? null; }

function alarmLabel(alarm) { return label("alarm", alarm.type || "alarm"); }

function since(iso) { return window.nvrI18n.ago(iso); }

// "<b>3</b> online": the number in bold, the words around it from the catalogue ("{n}" marks where it goes).
function summaryPart(key, value, bad = false) {
  const span = document.createElement("span");
  if (bad) span.className = "bad";
  const [before, after] = t(key).split("{n}");
  const number = document.createElement("b");
  number.textContent = window.nvrI18n.number(value);
  span.append(before || "", number, after || "");
  return span;
}

function toggleFullscreen(tile) {
  if (document.fullscreenElement) { document.exitFullscreen().catch(() => {}); return; }
  if (tile.classList.contains("expanded")) { tile.classList.remove("expanded"); return; }
  if (tile.requestFullscreen) {
    tile.requestFullscreen().catch(() => tile.classList.add("expanded"));
  } else {
    tile.classList.add("expanded");
  }
}

window.nvrConsole = new Console();
window.nvrConsole.start();
