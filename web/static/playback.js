// The auditor's workbench: up to four sources (cameras, body-worn devices) on one timeline, played
// together over HLS (hls.js, or the browser's own HLS), with gaps and their causes, alarms, bookmarks,
// thumbnails, zoom from a day to a minute, scrubbing, speed 0.25x..16x and frame steps.
//
// Time: one master clock in wall-clock milliseconds (UTC). Each source maps wall-clock time to its media
// time through the playlist's EXT-X-PROGRAM-DATE-TIME (hls.js: frag.programDateTime); the sync loop keeps
// every video within a few tens of milliseconds of the clock with small playbackRate nudges, and seeks
// when one is further off. While a source that should be playing is seeking or buffering, the clock
// holds and every video waits, so they start again together.
"use strict";

(() => {
  const I = window.nvrI18n;
  const { t } = I;
  const $ = (id) => document.getElementById(id);
  const MAX_SOURCES = 4;
  const SYNC_MS = 50;            // the sync loop's period
  const SEEK_OVER = 0.4;         // seconds of drift beyond which a video is seeked instead of nudged
  const NUDGE_OVER = 0.02;       // seconds of drift below which nothing is done
  const NUDGE_GAIN = 0.5;        // rate change per second of drift ...
  const NUDGE_MAX = 0.1;         // ... at most 10 %
  const HOLD_MAX_MS = 4000;      // a source still not ready after this long is left behind
  const MIN_VIEW_MS = 60 * 1000; // the deepest zoom: one minute across the timeline
  const DEFAULT_RANGE_MS = 3600 * 1000;
  const THUMB_WIDTH = 112;
  const SKIP_AFTER_MS = 1000;    // "not recorded" shown this long before a gap of every source is skipped
  const SKIP_OVER_MS = 2000;     // shorter gaps are played through

  // -- the master clock ---------------------------------------------------------------------

  const clock = {
    wall: 0, perf: 0, rate: 1, playing: false, holding: false, holdSince: 0,
    now() {
      if (!this.playing || this.holding) return this.wall;
      return this.wall + (performance.now() - this.perf) * this.rate;
    },
    set(wall) { this.wall = wall; this.perf = performance.now(); },
    setRate(rate) { this.set(this.now()); this.rate = rate; },
    play() { this.set(this.now()); this.playing = true; },
    pause() { this.set(this.now()); this.playing = false; },
    hold(on) {
      if (on === this.holding) return;
      this.set(this.now());
      this.holding = on;
      this.holdSince = performance.now();
    },
  };

  const state = { start: 0, end: 0, viewStart: 0, viewEnd: 0, sources: [], known: [], searched: false };

  // -- fetching -----------------------------------------------------------------------------

  async function getJson(url, { optional = false } = {}) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (optional && response.status === 404) return null;  // a route this station does not have (yet)
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.message || t("playback.http_error", { status: response.status }));
      error.code = body.error;
      throw error;
    }
    return body;
  }

  const recordings = (id) => `/api/recordings/${encodeURIComponent(id)}`;

  // -- one source ---------------------------------------------------------------------------

  class Source {
    constructor(info) {
      this.id = info.id;
      this.name = info.name || info.id;
      this.kind = info.kind || "camera";
      this.spans = [];
      this.gaps = [];
      this.alarms = [];
      this.bookmarks = [];
      this.fps = 15;
      this.hls = null;
      this.fragments = [];   // native HLS: parsed from the playlist
      this.error = null;
      this.tile = $("tile-template").content.firstElementChild.cloneNode(true);
      this.tile.dataset.source = this.id;
      this.video = this.tile.querySelector("video");
      this.tile.querySelector(".tile-name").textContent = this.name;
      // The media time of the frame on screen (requestVideoFrameCallback), so a frame step lands on a frame.
      this.frameTime = NaN;
      if (this.video.requestVideoFrameCallback) {
        const onFrame = (_now, meta) => { this.frameTime = meta.mediaTime; this.video.requestVideoFrameCallback(onFrame); };
        this.video.requestVideoFrameCallback(onFrame);
      }
    }

    async search(start, end) {
      const q = new URLSearchParams({ camera: this.id, start: I.isoUtc(start), end: I.isoUtc(end) });
      const result = await getJson("/api/recordings?" + q);
      this.result = result;
      this.spans = result.spans.map((s) => ({ start: Date.parse(s.start), end: Date.parse(s.end) }));
      this.gaps = result.gaps.map((g) => ({ ...g, start: Date.parse(g.start), end: Date.parse(g.end), source: this }));
      const seg = result.segments.find((s) => s.frames && Date.parse(s.end) > Date.parse(s.start));
      if (seg) this.fps = seg.frames / ((Date.parse(seg.end) - Date.parse(seg.start)) / 1000);
      const ev = new URLSearchParams({ camera: this.id, since: I.isoUtc(start), until: I.isoUtc(end) });
      const alarms = await getJson("/api/events?" + ev, { optional: true }).catch(() => null);
      this.alarms = (Array.isArray(alarms) ? alarms : (alarms && alarms.events) || [])
        .filter((a) => a.opened_at)
        .map((a) => ({ ...a, at: Date.parse(a.opened_at), until: a.closed_at ? Date.parse(a.closed_at) : end, source: this }))
        .sort((a, b) => a.at - b.at);
      const bq = new URLSearchParams({ camera: this.id, start: I.isoUtc(start), end: I.isoUtc(end) });
      const marks = await getJson("/api/bookmarks?" + bq, { optional: true }).catch(() => null);
      this.bookmarks = ((marks && marks.bookmarks) || [])
        .map((b) => ({ ...b, at: Date.parse(b.at), source: this })).filter((b) => Number.isFinite(b.at))
        .sort((a, b) => a.at - b.at);
    }

    playlistUrl(start, end) {
      return `${recordings(this.id)}/index.m3u8?` + new URLSearchParams({ start: I.isoUtc(start), end: I.isoUtc(end) });
    }

    attach(start, end) {
      this.detach();
      if (!this.spans.length) { this.fail(t("playback.nothing_recorded")); return; }
      const url = this.playlistUrl(start, end);
      if (window.Hls && window.Hls.isSupported()) {
        // No worker: fMP4 needs no transmuxing, and the page's CSP allows no blob: workers.
        const hls = new window.Hls({ enableWorker: false, maxBufferLength: bufferSeconds(clock.rate),
          maxMaxBufferLength: 120, backBufferLength: 30 });
        this.hls = hls;
        let retries = 0;
        hls.on(window.Hls.Events.ERROR, (_event, data) => {
          if (!data.fatal) return;
          const status = data.response && data.response.code;
          // A network hiccup or a decoder error is retried a few times (hls.js's own recovery), not final.
          if (status !== 404 && status !== 403 && retries < 3) {
            retries += 1;
            if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
            else if (String(data.details).startsWith("manifest")) setTimeout(() => { if (this.hls === hls) hls.loadSource(url); }, 1000 * retries);
            else setTimeout(() => { if (this.hls === hls) hls.startLoad(); }, 1000 * retries);
            return;
          }
          const answer = errorBody(data.networkDetails);
          if (answer.error === "only_in_archive") { this.offerClip(start, end, answer.message); return; }
          this.fail(status === 404 ? t("playback.nothing_recorded") : t("playback.player_error", { detail: data.details }));
        });
        hls.on(window.Hls.Events.FRAG_BUFFERED, () => { retries = 0; });
        hls.loadSource(url);
        hls.attachMedia(this.video);
      } else if (this.video.canPlayType("application/vnd.apple.mpegurl")) {
        // The browser plays HLS itself; the wall-clock map comes from the same playlist.
        fetch(url, { credentials: "same-origin" }).then((r) => (r.ok ? r.text() : Promise.reject(new Error(String(r.status)))))
          .then((text) => { this.fragments = parsePlaylist(text); this.video.src = url; })
          .catch(() => this.fail(t("playback.nothing_recorded")));
      } else {
        this.fail(t("playback.no_hls"));
      }
    }

    detach() {
      if (this.hls) { this.hls.destroy(); this.hls = null; }
      this.clip = false;
      this.video.controls = false;
      this.video.removeAttribute("src");
      this.fragments = [];
      this.error = null;
    }

    /** Footage the station keeps only in the off-site archive plays as a clip (fetched back), on its own. */
    offerClip(start, end, detail) {
      this.fail(t("playback.only_in_archive"));
      const box = this.tile.querySelector(".tile-gap");
      box.querySelector(".tile-gap-cause").textContent = detail || "";
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = t("playback.play_as_clip");
      button.addEventListener("click", () => {
        this.clip = true;
        this.hideMessage();
        this.video.controls = true;
        this.video.src = `${recordings(this.id)}/clip.mp4?` + new URLSearchParams({ start: I.isoUtc(start), end: I.isoUtc(end) });
        this.video.play().catch(() => {});
      }, { once: true });
      box.append(button);
    }

    fail(message) {
      this.error = message;
      this.showMessage(message, "");
    }

    /** [{pdt, start, end}] in wall-clock ms and media seconds, ordered. */
    frags() {
      if (this.hls) {
        const level = this.hls.levels && this.hls.levels[Math.max(0, this.hls.currentLevel)];
        const details = level && level.details;
        if (!details) return [];
        if (details !== this._details || details.fragments.length !== this._count) {
          this._details = details;
          this._count = details.fragments.length;
          this._frags = details.fragments.filter((f) => Number.isFinite(f.programDateTime))
            .map((f) => ({ pdt: f.programDateTime, start: f.start, end: f.start + f.duration }));
        }
        return this._frags;
      }
      return this.fragments;
    }

    /** Media time (s) showing wall-clock ms, or null when this source recorded nothing then. */
    mediaAt(wall) {
      const frags = this.frags();
      let lo = 0, hi = frags.length - 1, found = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (frags[mid].pdt <= wall) { found = mid; lo = mid + 1; } else hi = mid - 1;
      }
      if (found < 0) return null;
      const f = frags[found];
      const media = f.start + (wall - f.pdt) / 1000;
      return media < f.end + 0.05 ? Math.min(media, f.end - 0.001) : null;
    }

    /** Wall-clock ms shown at media time (s), or NaN. */
    wallAt(media) {
      const f = this.frags().find((x) => media >= x.start && media < x.end + 0.001);
      return f ? f.pdt + (media - f.start) * 1000 : NaN;
    }

    /** The first fragment that starts after wall-clock ms, or null. */
    nextFrag(wall) {
      const frags = this.frags();
      let lo = 0, hi = frags.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (frags[mid].pdt <= wall) lo = mid + 1; else hi = mid; }
      return frags[lo] || null;
    }

    gapAt(wall) { return this.gaps.find((g) => wall >= g.start && wall < g.end) || null; }

    showMessage(title, detail) {
      const box = this.tile.querySelector(".tile-gap");
      box.hidden = false;
      box.querySelector(".tile-gap-title").textContent = title;
      box.querySelector(".tile-gap-cause").textContent = detail;
      this.tile.classList.add("in-gap");
    }

    hideMessage() {
      this.tile.querySelector(".tile-gap").hidden = true;
      this.tile.classList.remove("in-gap");
    }
  }

  function parsePlaylist(text) {
    const frags = [];
    let pdt = NaN, media = 0, duration = 0;
    for (const line of text.split(/\r?\n/)) {
      if (line.startsWith("#EXT-X-PROGRAM-DATE-TIME:")) pdt = Date.parse(line.slice(25));
      else if (line.startsWith("#EXTINF:")) duration = parseFloat(line.slice(8));
      else if (line && !line.startsWith("#")) {
        if (Number.isFinite(pdt)) frags.push({ pdt, start: media, end: media + duration });
        media += duration;
        pdt += duration * 1000;
      }
    }
    return frags;
  }

  /** The daemon's JSON error from a failed request hls.js made (XHR), or {}. */
  function errorBody(details) {
    try {
      return JSON.parse(details && typeof details.responseText === "string" ? details.responseText : "") || {};
    } catch (_error) {
      return {};
    }
  }

  function causeText(gap) {
    const cause = I.label("cause", gap.cause);
    return gap.reason ? t("playback.cause_reason", { cause, reason: I.label("reason", gap.reason) }) : cause;
  }

  // -- the sync loop ------------------------------------------------------------------------

  // Media seconds buffered ahead: about three seconds of the auditor's time at any speed, at least ten.
  function bufferSeconds(rate) { return Math.max(10, Math.min(120, 3 * rate)); }

  function clampRate(rate) { return Math.max(0.0625, Math.min(16, rate)); }

  function sync() {
    if (!state.searched) return;
    let now = clock.now();
    if (now >= state.end) { now = state.end; if (clock.playing) { clock.set(now); pause(); } }
    let waiting = false;
    const active = [];
    for (const s of state.sources) {
      const v = s.video;
      if (s.clip) continue;  // an archive clip plays on its own
      const target = s.error ? null : s.mediaAt(now);
      if (target === null) {
        if (!v.paused) v.pause();
        if (s.error) continue;
        const gap = s.gapAt(now);
        if (s.frags().length || gap) {
          s.showMessage(t("playback.not_recorded"), gap ? causeText(gap) : "");
        }
        // Ready where its recording starts again, so it joins the others without holding them.
        const next = s.nextFrag(now);
        if (next && next.pdt - now < 3000 * clock.rate && !v.seeking && Math.abs(v.currentTime - next.start) > 0.05) {
          v.currentTime = next.start;
        }
        continue;
      }
      s.hideMessage();
      active.push([s, target]);
      if (v.seeking) { if (clock.playing) waiting = true; continue; }
      const drift = v.currentTime - target;
      if (!clock.playing) {
        if (!v.paused) v.pause();
        if (Math.abs(drift) > 0.01) v.currentTime = target;
      } else if (v.readyState < 3) {
        waiting = true;
      } else if (Math.abs(drift) > SEEK_OVER) {
        v.currentTime = target;
        waiting = true;
      }
    }
    if (skipGap(now, active.length)) return;
    if (clock.playing) {
      const stuck = clock.holding && performance.now() - clock.holdSince > HOLD_MAX_MS;
      clock.hold(waiting && !stuck);
      for (const [s, target] of active) {
        const v = s.video;
        if (clock.holding) { if (!v.paused) v.pause(); continue; }
        if (v.seeking || v.readyState < 3) continue;
        const drift = v.currentTime - target;
        const nudge = Math.abs(drift) > NUDGE_OVER ? Math.max(-NUDGE_MAX, Math.min(NUDGE_MAX, -drift * NUDGE_GAIN)) : 0;
        v.playbackRate = clampRate(clock.rate * (1 + nudge));
        if (v.paused) v.play().catch(() => {});
      }
    }
    const shown = clock.now();
    if (clock.playing && !scrubbing && (shown > state.viewEnd || shown < state.viewStart)) followView(shown);
    drawNow(shown);
  }

  /** Playing through a time no source recorded: after a moment, on to the next recording (when asked to). */
  function skipGap(now, playing) {
    if (!clock.playing || clock.holding || playing || !$("skip-gaps").checked) { state.gapSince = 0; return false; }
    const starts = state.sources.filter((s) => !s.error).map((s) => s.nextFrag(now)).filter(Boolean).map((f) => f.pdt);
    if (!starts.length || Math.min(...starts) - now < SKIP_OVER_MS) { state.gapSince = 0; return false; }
    state.gapSince ||= performance.now();
    if (performance.now() - state.gapSince < SKIP_AFTER_MS) return false;
    state.gapSince = 0;
    seek(Math.min(...starts));
    return true;
  }

  // -- transport ----------------------------------------------------------------------------

  function seek(wall) {
    if (!state.searched) return;
    clock.set(Math.max(state.start, Math.min(wall, state.end)));
    for (const s of state.sources) {
      const target = s.error ? null : s.mediaAt(clock.wall);
      if (target !== null && !s.video.seeking) s.video.currentTime = target;
    }
    if (clock.playing) clock.hold(true);
    followView(clock.wall);
    sync();
  }

  function play() {
    if (!state.searched) return;
    if (clock.now() >= state.end - 100) clock.set(state.start);
    clock.play();
    clock.hold(true);
    $("play").textContent = t("playback.pause");
    sync();
  }

  function pause() {
    clock.pause();
    for (const s of state.sources) s.video.pause();
    $("play").textContent = t("playback.play");
  }

  /** One frame forward or back (paused): to the middle of the next or previous frame of the first source
   *  showing one, so rounding never skips or repeats a frame; the others follow to the same instant. */
  function step(direction) {
    if (!state.searched) return;
    if (clock.playing) pause();
    const now = clock.now();
    const lead = state.sources.find((s) => !s.error && Number.isFinite(s.frameTime) && s.mediaAt(now) !== null);
    if (lead) {
      const wall = lead.wallAt(lead.frameTime + (direction + 0.5) / (lead.fps || 15));
      if (Number.isFinite(wall)) { seek(wall); return; }
    }
    const fps = Math.max(1, ...state.sources.map((s) => s.fps || 1));
    seek(now + direction * 1000 / fps);
  }

  function setSpeed(rate) {
    clock.setRate(rate);
    for (const s of state.sources) {
      s.video.playbackRate = clampRate(rate);
      if (s.hls) s.hls.config.maxBufferLength = bufferSeconds(rate);
    }
    $("speed").value = String(rate);
    sync();
  }

  /** The next (direction 1) or previous (-1) gap, alarm or bookmark of any source. */
  function jump(kind, direction) {
    const now = clock.now();
    const all = state.sources.flatMap((s) =>
      kind === "gap" ? s.gaps.map((g) => g.start) : kind === "alarm" ? s.alarms.map((a) => a.at) : s.bookmarks.map((b) => b.at));
    const times = [...new Set(all)].sort((a, b) => a - b);
    const target = direction > 0 ? times.find((x) => x > now + 1000) : times.reverse().find((x) => x < now - 1000);
    if (target !== undefined) seek(target);
  }

  // -- the timeline -------------------------------------------------------------------------

  const pct = (ms) => (100 * (ms - state.viewStart)) / (state.viewEnd - state.viewStart);
  const timeAtX = (clientX) => {
    const rect = $("timeline").getBoundingClientRect();
    let fraction = (clientX - rect.left) / rect.width;
    if (I.dir === "rtl") fraction = 1 - fraction;
    return state.viewStart + (state.viewEnd - state.viewStart) * Math.max(0, Math.min(1, fraction));
  };

  function place(el, from, to, minPct = 0.15) {
    const a = Math.max(0, pct(from)), b = Math.min(100, pct(to));
    el.style.insetInlineStart = a + "%";
    el.style.width = Math.max(minPct, b - a) + "%";
  }

  function drawTimeline() {
    const rows = $("rows");
    rows.replaceChildren();
    for (const s of state.sources) {
      const row = document.createElement("div");
      row.className = "row";
      row.dataset.source = s.id;
      const label = document.createElement("span");
      label.className = "row-label";
      label.textContent = s.name;
      row.append(label);
      const visible = (a, b) => b > state.viewStart && a < state.viewEnd;
      for (const span of s.spans.filter((x) => visible(x.start, x.end))) {
        const el = document.createElement("div");
        el.className = "span";
        place(el, span.start, span.end);
        el.title = t("playback.span_title", { from: I.dateTime(span.start), to: I.dateTime(span.end) });
        row.append(el);
      }
      for (const gap of s.gaps.filter((x) => visible(x.start, x.end))) {
        const el = document.createElement("div");
        el.className = `gap cause-${gap.cause}`;
        place(el, gap.start, gap.end);
        el.title = t("playback.gap_title", { from: I.dateTime(gap.start), to: I.dateTime(gap.end),
          duration: I.duration(gap.seconds), cause: causeText(gap) });
        row.append(el);
      }
      for (const alarm of s.alarms.filter((x) => visible(x.at, x.until))) {
        const el = document.createElement("div");
        el.className = `alarm ${alarm.severity || ""}`;
        place(el, alarm.at, alarm.until, 0.3);
        el.title = t("playback.alarm_title", { type: I.label("alarm", alarm.type), at: I.dateTime(alarm.at) });
        row.append(el);
      }
      for (const mark of s.bookmarks.filter((x) => visible(x.at, x.at))) {
        const el = document.createElement("div");
        el.className = "bookmark";
        el.style.insetInlineStart = pct(mark.at) + "%";
        el.title = t("playback.bookmark_title", { case_id: mark.case_id || "", note: mark.note || "", at: I.dateTime(mark.at) });
        row.append(el);
      }
      rows.append(row);
    }
    drawAxis();
    $("view").textContent = t("playback.view", { from: I.dateTime(state.viewStart), to: I.dateTime(state.viewEnd) });
    $("view").title = I.hover(state.viewStart);
    scheduleStrip();
    drawNow(clock.now());
  }

  const STEPS = [1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map((s) => s * 1000);

  function drawAxis() {
    const axis = $("axis");
    axis.replaceChildren();
    const span = state.viewEnd - state.viewStart;
    const stepMs = STEPS.find((s) => span / s <= 8) || STEPS[STEPS.length - 1];
    const offset = I.offsetMinutes(state.viewStart) * 60000;
    let tick = state.viewStart - ((state.viewStart + offset) % stepMs + stepMs) % stepMs;
    if (tick < state.viewStart) tick += stepMs;
    for (; tick <= state.viewEnd; tick += stepMs) {
      const el = I.timeElement(tick, stepMs < 60000 ? "time" : "minute");
      el.style.insetInlineStart = pct(tick) + "%";
      axis.append(el);
    }
  }

  function drawNow(now) {
    const cursor = $("cursor");
    cursor.hidden = !state.searched || now < state.viewStart || now > state.viewEnd;
    cursor.style.insetInlineStart = pct(now) + "%";
    const el = $("now");
    el.textContent = state.searched ? I.dateTimeLong(now) : "";
    el.dateTime = state.searched ? I.isoUtc(now) : "";
    el.title = I.hover(now);
    for (const s of state.sources) {
      const time = s.tile.querySelector(".tile-time");
      const shown = s.video.currentSrc && !s.tile.classList.contains("in-gap") ? s.wallAt(s.video.currentTime) : NaN;
      time.textContent = Number.isFinite(shown) ? I.millis(shown) : "";
      time.title = I.hover(shown);
    }
  }

  function setView(start, end) {
    const whole = state.end - state.start;
    let span = Math.max(Math.min(end - start, whole), Math.min(MIN_VIEW_MS, whole));
    let from = Math.max(state.start, Math.min(start, state.end - span));
    state.viewStart = from;
    state.viewEnd = from + span;
    drawTimeline();
  }

  function zoomTo(seconds, around = clock.now()) {
    if (!seconds) { setView(state.start, state.end); return; }
    const span = seconds * 1000;
    setView(around - span / 2, around + span / 2);
  }

  function followView(now) {
    if (now < state.viewStart || now > state.viewEnd) {
      const span = state.viewEnd - state.viewStart;
      setView(now - span * 0.1, now + span * 0.9);
    }
  }

  let scrubbing = false;  // the pointer is down on the timeline

  function bindTimeline() {
    const tl = $("timeline");
    let wasPlaying = false;
    tl.addEventListener("pointerdown", (event) => {
      if (!state.searched || event.button !== 0) return;
      scrubbing = true;
      wasPlaying = clock.playing;
      if (wasPlaying) pause();
      tl.setPointerCapture(event.pointerId);
      seek(timeAtX(event.clientX));
    });
    tl.addEventListener("pointermove", (event) => {
      if (!state.searched) return;
      const at = timeAtX(event.clientX);
      if (scrubbing) seek(at);
      const rowEl = document.elementsFromPoint(event.clientX, event.clientY).find((e) => e.classList && e.classList.contains("row"));
      hover(at, event.clientX, rowEl ? rowEl.dataset.source : state.sources[0] && state.sources[0].id);
    });
    const end = () => {
      if (!scrubbing) return;
      scrubbing = false;
      if (wasPlaying) play();
    };
    tl.addEventListener("pointerup", end);
    tl.addEventListener("pointercancel", end);
    tl.addEventListener("pointerleave", () => { $("preview").hidden = true; $("hover-line").hidden = true; });
    tl.addEventListener("wheel", (event) => {
      if (!state.searched) return;
      event.preventDefault();
      const span = state.viewEnd - state.viewStart;
      if (event.shiftKey || Math.abs(event.deltaX) > Math.abs(event.deltaY)) {
        const delta = (event.shiftKey ? event.deltaY : event.deltaX) / 500 * span;
        setView(state.viewStart + delta, state.viewEnd + delta);
        return;
      }
      const at = timeAtX(event.clientX);
      const factor = event.deltaY > 0 ? 1.25 : 0.8;
      const next = span * factor;
      const ratio = (at - state.viewStart) / span;
      setView(at - next * ratio, at - next * ratio + next);
    }, { passive: false });
  }

  // -- thumbnails ---------------------------------------------------------------------------

  let hoverTimer = 0;
  let hoverKey = "";

  function hover(at, clientX, sourceId) {
    const line = $("hover-line");
    line.hidden = false;
    line.style.insetInlineStart = pct(at) + "%";
    const preview = $("preview");
    const wrap = preview.parentElement.getBoundingClientRect();
    preview.hidden = false;
    preview.style.left = Math.max(0, Math.min(wrap.width - THUMB_WIDTH * 1.6, clientX - wrap.left - THUMB_WIDTH * 0.8)) + "px";
    const label = $("preview-time");
    label.textContent = I.dateTime(at);
    label.dateTime = I.isoUtc(at);
    const source = state.sources.find((s) => s.id === sourceId);
    clearTimeout(hoverTimer);
    if (!source) return;
    // One request per 2 s of timeline (at the current zoom) and pause of the pointer, not per pixel.
    const bucket = Math.round(at / Math.max(2000, (state.viewEnd - state.viewStart) / 200));
    const key = `${source.id}:${bucket}`;
    if (key === hoverKey) return;
    hoverTimer = setTimeout(() => {
      hoverKey = key;
      const img = $("preview-img");
      img.onerror = () => { img.hidden = true; preview.classList.add("no-picture"); };
      img.onload = () => { img.hidden = false; preview.classList.remove("no-picture"); };
      img.alt = t("playback.thumbnail_alt", { name: source.name, at: I.dateTime(at) });
      img.src = `${recordings(source.id)}/thumbnail.jpg?` + new URLSearchParams({ at: I.isoUtc(at) });
    }, 120);
  }

  let stripTimer = 0;
  let stripKey = "";

  function scheduleStrip() {
    clearTimeout(stripTimer);
    stripTimer = setTimeout(drawStrip, 250);
  }

  async function drawStrip() {
    const strip = $("strip");
    const source = state.sources.find((s) => !s.error && s.spans.length);
    if (!source) { strip.replaceChildren(); return; }
    const limit = Math.max(1, Math.floor(strip.clientWidth / THUMB_WIDTH));
    const key = `${source.id}:${state.viewStart}:${state.viewEnd}:${limit}`;
    if (key === stripKey) return;
    stripKey = key;
    const q = new URLSearchParams({ start: I.isoUtc(state.viewStart), end: I.isoUtc(state.viewEnd), limit: String(limit) });
    let body = null;
    try {
      body = await getJson(`${recordings(source.id)}/thumbnails?` + q, { optional: true });
    } catch (_error) { body = null; }
    if (key !== stripKey) return;
    const items = (body && body.thumbnails) || [];
    strip.replaceChildren(...items.map((item) => {
      const at = Date.parse(item.at);
      const img = document.createElement("img");
      img.src = item.url;
      img.loading = "lazy";
      img.alt = t("playback.thumbnail_alt", { name: source.name, at: I.dateTime(at) });
      img.title = `${I.dateTime(at)}\n${I.hover(at)}`;
      img.style.insetInlineStart = `calc(${pct(at)}% - ${THUMB_WIDTH / 2}px)`;
      img.addEventListener("click", () => seek(at));
      return img;
    }));
    strip.classList.toggle("empty", !items.length);
  }

  // -- lists --------------------------------------------------------------------------------

  function list(ul, items, label, when) {
    ul.replaceChildren();
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = t("playback.none");
      ul.append(li);
      return;
    }
    for (const item of items) {
      const li = document.createElement("li");
      const at = when(item);
      li.append(I.timeElement(at), document.createTextNode(" " + label(item)));
      li.addEventListener("click", () => seek(at));
      ul.append(li);
    }
  }

  function drawLists() {
    const many = state.sources.length > 1;
    const who = (x) => (many ? t("playback.list_source", { name: x.source.name }) : "");
    const gaps = state.sources.flatMap((s) => s.gaps).sort((a, b) => a.start - b.start);
    list($("gaps"), gaps, (g) => t("playback.gap_item", { duration: I.duration(g.seconds), cause: causeText(g), source: who(g) }),
      (g) => g.start);
    const alarms = state.sources.flatMap((s) => s.alarms).sort((a, b) => a.at - b.at);
    list($("alarms"), alarms, (a) => t("playback.alarm_item", { type: I.label("alarm", a.type),
      severity: I.label("severity", a.severity || "warning"), source: who(a) }), (a) => Math.max(state.start, a.at - 5000));
    const marks = state.sources.flatMap((s) => s.bookmarks).sort((a, b) => a.at - b.at);
    list($("bookmarks"), marks, (b) => t("playback.bookmark_item", { case_id: b.case_id || "", note: b.note || "",
      source: who(b) }), (b) => b.at);
  }

  // -- the query ----------------------------------------------------------------------------

  function chosen() {
    return [...document.querySelectorAll("#sources input:checked")].map((box) => box.value);
  }

  function renderChoices(selected) {
    const box = $("sources");
    box.querySelectorAll("label").forEach((l) => l.remove());
    for (const info of state.known) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox";
      input.value = info.id;
      input.checked = selected.includes(info.id);
      input.addEventListener("change", limitChoices);
      label.append(input, document.createTextNode(" " + t(info.kind === "bodycam" ? "playback.bodycam_option" : "playback.camera_option",
        { name: info.name, id: info.id })));
      box.append(label);
    }
    limitChoices();
  }

  function limitChoices() {
    const picked = chosen();
    document.querySelectorAll("#sources input").forEach((input) => {
      input.disabled = !input.checked && picked.length >= MAX_SOURCES;
    });
    $("sources-summary").textContent = picked.length
      ? t("playback.sources_chosen", { n: picked.length, names: picked.map((id) => (state.known.find((k) => k.id === id) || { name: id }).name).join(", ") })
      : t("playback.sources");
  }

  function showInputZone() {
    for (const id of ["start", "end"]) {
      const input = $(id);
      let out = input.parentElement.querySelector("output");
      if (!out) { out = document.createElement("output"); out.className = "as-read"; input.after(out); }
      const ms = I.fromInput(input.value);
      out.textContent = Number.isFinite(ms) ? I.dateTime(ms) : "";
      out.title = I.hover(ms);
    }
  }

  async function loadChoices() {
    const cameras = await getJson("/api/cameras");
    const bodycams = await getJson("/api/bodycams", { optional: true }).catch(() => null);
    state.known = [
      ...cameras.map((c) => ({ id: c.id, name: c.name, kind: "camera" })),
      ...((bodycams && bodycams.bodycams) || []).map((b) => ({ id: b.id, name: b.name || b.id, kind: "bodycam" })),
    ];
    const params = new URLSearchParams(location.search);
    const requested = [...new Set((params.get("sources") || params.get("camera") || "").split(",")
      .map((x) => x.trim()).filter(Boolean))];
    const selected = requested.length ? requested.slice(0, MAX_SOURCES) : state.known.slice(0, 1).map((k) => k.id);
    for (const id of selected) {
      if (!state.known.some((k) => k.id === id)) state.known.push({ id, name: id, kind: "camera" });
    }
    renderChoices(selected);
    const end = params.get("end") ? Date.parse(params.get("end")) : Date.now();
    const start = params.get("start") ? Date.parse(params.get("start")) : end - DEFAULT_RANGE_MS;
    $("start").value = I.toInput(start);
    $("end").value = I.toInput(end);
    $("tz").textContent = t("playback.tz", { zone: I.timeZone });
    $("tz").title = t("playback.tz_hint");
    showInputZone();
    const at = params.get("at") ? Date.parse(params.get("at")) : NaN;
    if (requested.length) await search(null, Number.isFinite(at) ? at : null);
  }

  async function search(event, at = null) {
    if (event) event.preventDefault();
    const ids = chosen();
    const start = I.fromInput($("start").value);
    const end = I.fromInput($("end").value);
    const status = $("status");
    status.className = "status";
    if (!ids.length) { status.textContent = t("playback.choose"); return; }
    if (!(end > start)) { status.className = "status error"; status.textContent = t("playback.bad_range"); return; }
    pause();
    for (const s of state.sources) s.detach();
    state.searched = false;
    state.start = start;
    state.end = end;
    status.textContent = t("playback.searching");
    const q = new URLSearchParams({ sources: ids.join(","), start: I.isoUtc(start), end: I.isoUtc(end) });
    if (at !== null) q.set("at", I.isoUtc(at));
    history.replaceState(null, "", "?" + q.toString());
    const sources = ids.map((id) => new Source(state.known.find((k) => k.id === id) || { id }));
    // Every source's search is awaited, so that the error names each source that failed (a hand-edited
    // link with two unknown cameras names both, not whichever answered first).
    const failed = (await Promise.allSettled(sources.map((s) => s.search(start, end))))
      .filter((r) => r.status === "rejected").map((r) => (r.reason && r.reason.message) || String(r.reason));
    if (failed.length) {
      status.className = "status error";
      status.textContent = [...new Set(failed)].join(" · ");
      return;
    }
    state.sources = sources;
    const stage = $("stage");
    stage.dataset.count = String(sources.length);
    stage.replaceChildren(...sources.map((s) => s.tile));
    const total = (end - start) / 1000;
    status.replaceChildren(...sources.map((s) => {
      const line = document.createElement("span");
      line.className = "summary";
      line.textContent = t("playback.summary", {
        name: s.name, recorded: I.duration(s.result.recorded_seconds), total: I.duration(total),
        percent: I.number(100 * s.result.recorded_seconds / total, { maximumFractionDigits: 1 }),
        spans: s.spans.length, gaps: s.gaps.length, alarms: s.alarms.length, bookmarks: s.bookmarks.length,
      });
      return line;
    }));
    for (const s of sources) s.attach(start, end);
    state.searched = true;
    const first = Math.min(...sources.flatMap((s) => s.spans.map((x) => x.start)));
    clock.set(at !== null ? Math.max(start, Math.min(at, end)) : Number.isFinite(first) ? Math.max(start, first) : start);
    setView(start, end);
    drawLists();
    sync();
    if (at !== null) play();
  }

  // -- wiring -------------------------------------------------------------------------------

  function bind() {
    $("query").addEventListener("submit", search);
    for (const id of ["start", "end"]) $(id).addEventListener("input", showInputZone);
    $("play").addEventListener("click", () => (clock.playing ? pause() : play()));
    $("frame-back").addEventListener("click", () => step(-1));
    $("frame-forward").addEventListener("click", () => step(1));
    $("speed").addEventListener("change", () => setSpeed(Number($("speed").value)));
    const skip = $("skip-gaps");
    skip.checked = localStorage.getItem("nvr.playback.skipGaps") !== "no";
    skip.addEventListener("change", () => localStorage.setItem("nvr.playback.skipGaps", skip.checked ? "yes" : "no"));
    document.querySelectorAll("[data-jump]").forEach((b) => b.addEventListener("click", () => jump(b.dataset.jump, Number(b.dataset.dir))));
    document.querySelectorAll("[data-zoom]").forEach((b) => b.addEventListener("click", () => zoomTo(Number(b.dataset.zoom))));
    bindTimeline();
    document.addEventListener("keydown", (event) => {
      if (event.target.closest && event.target.closest("input, select, textarea")) return;
      const forward = I.dir === "rtl" ? "ArrowLeft" : "ArrowRight";
      const back = I.dir === "rtl" ? "ArrowRight" : "ArrowLeft";
      if (event.key === " ") { event.preventDefault(); if (clock.playing) pause(); else play(); }
      else if (event.key === forward) step(1);
      else if (event.key === back) step(-1);
    });
    window.addEventListener("resize", () => { if (state.searched) drawTimeline(); });
    setInterval(sync, SYNC_MS);
  }

  // For tests and the curious: the clock and each source's map from wall-clock to media time.
  window.nvrPlayback = {
    clock, state, seek, play, pause, setSpeed, step, zoomTo,
    sources: () => state.sources.map((s) => ({ id: s.id, time: s.video.currentTime, wall: s.wallAt(s.video.currentTime),
      width: s.video.videoWidth, ready: s.video.readyState, paused: s.video.paused, error: s.error,
      gap: s.tile.classList.contains("in-gap") })),
  };

  bind();
  loadChoices().catch((err) => { $("status").className = "status error"; $("status").textContent = err.message; });
})();
