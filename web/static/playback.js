// Playback for auditors: search a camera's recordings, see spans, gaps and alarms, play from any moment.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { camera: null, start: 0, end: 0, result: null, alarms: [], offset: 0 };

function isoUtc(ms) { return new Date(ms).toISOString(); }
function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
}
function fromInput(value) { return new Date(value).getTime(); }  // datetime-local is local time
function fmt(ms) { return new Date(ms).toLocaleString(undefined, { hour12: false }); }
function seconds(s) {
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + " h " : "") + (m ? m + " min " : "") + r + " s";
}

async function getJson(url) {
  const resp = await fetch(url, { credentials: "same-origin" });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.message || resp.statusText);
  return body;
}

async function loadCameras() {
  const cams = await getJson("/api/cameras");
  const select = $("camera");
  for (const cam of cams) {
    const opt = document.createElement("option");
    opt.value = cam.id;
    opt.textContent = `${cam.name} (${cam.id})`;
    select.appendChild(opt);
  }
  const params = new URLSearchParams(location.search);
  if (params.get("camera")) select.value = params.get("camera");
  const end = params.get("end") ? Date.parse(params.get("end")) : Date.now();
  const start = params.get("start") ? Date.parse(params.get("start")) : end - 3600 * 1000;
  $("start").value = localInput(start);
  $("end").value = localInput(end);
  $("tz").textContent = "times in " + Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (params.get("camera")) search();
}

async function search(event) {
  if (event) event.preventDefault();
  state.camera = $("camera").value;
  state.start = fromInput($("start").value);
  state.end = fromInput($("end").value);
  const status = $("status");
  status.className = "status";
  status.textContent = "Searching…";
  const q = new URLSearchParams({ camera: state.camera, start: isoUtc(state.start), end: isoUtc(state.end) });
  history.replaceState(null, "", "?" + q.toString());
  try {
    state.result = await getJson("/api/recordings?" + q);
  } catch (err) {
    status.className = "status error";
    status.textContent = err.message;
    return;
  }
  try {
    const ev = new URLSearchParams({ camera: state.camera, since: isoUtc(state.start), until: isoUtc(state.end) });
    const alarms = await getJson("/api/events?" + ev);
    state.alarms = (Array.isArray(alarms) ? alarms : alarms.events || [])
      .filter((a) => a.opened_at)
      .sort((a, b) => Date.parse(a.opened_at) - Date.parse(b.opened_at));
  } catch (err) {
    state.alarms = [];
  }
  const r = state.result;
  const total = (state.end - state.start) / 1000;
  status.textContent = `${seconds(r.recorded_seconds)} recorded of ${seconds(total)} ` +
    `(${(100 * r.recorded_seconds / total).toFixed(1)} %), ${r.spans.length} span(s), ${r.gaps.length} gap(s), ` +
    `${r.segments.length} segment(s), ${state.alarms.length} alarm(s).`;
  draw();
}

function pct(ms) { return (100 * (ms - state.start) / (state.end - state.start)); }

function draw() {
  const tl = $("timeline");
  tl.textContent = "";
  for (const span of state.result.spans) {
    const el = document.createElement("div");
    el.className = "span";
    el.style.left = pct(Date.parse(span.start)) + "%";
    el.style.width = Math.max(0.1, pct(Date.parse(span.end)) - pct(Date.parse(span.start))) + "%";
    el.title = `recorded ${fmt(Date.parse(span.start))} – ${fmt(Date.parse(span.end))}`;
    tl.appendChild(el);
  }
  for (const alarm of state.alarms) {
    const el = document.createElement("div");
    el.className = "alarm " + (alarm.severity || "");
    const opened = Date.parse(alarm.opened_at);
    const closed = alarm.closed_at ? Date.parse(alarm.closed_at) : state.end;
    el.style.left = pct(opened) + "%";
    el.style.width = Math.max(0.2, pct(closed) - pct(opened)) + "%";
    el.title = `${alarm.type} ${fmt(opened)}`;
    tl.appendChild(el);
  }
  const cursor = document.createElement("div");
  cursor.className = "cursor";
  cursor.id = "cursor";
  cursor.style.display = "none";
  tl.appendChild(cursor);

  const axis = $("axis");
  axis.textContent = "";
  for (let i = 0; i <= 6; i++) {
    const t = state.start + (state.end - state.start) * i / 6;
    const el = document.createElement("span");
    el.style.left = (100 * i / 6) + "%";
    el.textContent = new Date(t).toLocaleTimeString(undefined, { hour12: false });
    axis.appendChild(el);
  }
  list($("gaps"), state.result.gaps, (g) =>
    `${fmt(Date.parse(g.start))} – ${seconds(g.seconds)}${g.cause ? " · " + g.cause : ""}${g.reason ? " (" + g.reason + ")" : ""}`, (g) => Date.parse(g.end));
  list($("alarms"), state.alarms, (a) => `${fmt(Date.parse(a.opened_at))} · ${a.type} (${a.severity || ""})`,
    (a) => Date.parse(a.opened_at) - 5000);
}

function list(ul, items, label, when) {
  ul.textContent = "";
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "none";
    ul.appendChild(li);
    return;
  }
  for (const item of items) {
    const li = document.createElement("li");
    li.textContent = label(item);
    li.addEventListener("click", () => play(when(item)));
    ul.appendChild(li);
  }
}

function play(atMs) {
  if (!state.result) return;
  atMs = Math.max(state.start, Math.min(atMs, state.end - 1000));
  // The clip starts at the keyframe at or before the chosen moment, up to the end of the range.
  const end = Math.min(state.end, atMs + 3 * 3600 * 1000);
  const q = new URLSearchParams({ start: isoUtc(atMs), end: isoUtc(end) });
  const video = $("video");
  video.src = `/api/recordings/${encodeURIComponent(state.camera)}/clip.mp4?` + q;
  state.offset = atMs;
  video.play().catch(() => {});
}

function onTimelineClick(event) {
  if (!state.result) return;
  const rect = event.currentTarget.getBoundingClientRect();
  const at = state.start + (state.end - state.start) * (event.clientX - rect.left) / rect.width;
  play(at);
}

function jump(direction) {
  const video = $("video");
  const now = state.offset + (video.currentTime || 0) * 1000;
  const candidates = state.alarms.map((a) => Date.parse(a.opened_at));
  const target = direction > 0
    ? candidates.find((t) => t > now + 6000)
    : [...candidates].reverse().find((t) => t < now - 6000);
  if (target !== undefined) play(target - 5000);
}

function tick() {
  const video = $("video");
  if (!state.result || !video.src) return;
  const now = state.offset + video.currentTime * 1000;
  $("now").textContent = fmt(now);
  const cursor = $("cursor");
  if (cursor) {
    cursor.style.display = "block";
    cursor.style.left = pct(now) + "%";
  }
}

$("query").addEventListener("submit", search);
$("timeline").addEventListener("click", onTimelineClick);
$("prev-alarm").addEventListener("click", () => jump(-1));
$("next-alarm").addEventListener("click", () => jump(1));
$("video").addEventListener("timeupdate", tick);
loadCameras().catch((err) => { $("status").className = "status error"; $("status").textContent = err.message; });
