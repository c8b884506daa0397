// The case page: a case's ranges and bookmarks on one timeline, its packages and its custody history.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const caseId = location.pathname.split("/").filter(Boolean).pop();
  const api = `/api/cases/${encodeURIComponent(caseId)}`;
  let bodycams = new Set();
  const { t } = window.nvrI18n;

  // In the station's zone and the page's calendar, UTC on hover (web/static/i18n.js).
  const when = (iso) => (iso ? window.nvrI18n.dateTime(Date.parse(iso)) : "");
  const whenCell = (row, iso) => {
    const td = cell(row, when(iso));
    if (iso) td.title = window.nvrI18n.hover(Date.parse(iso));
    return td;
  };
  const cell = (row, text, className) => {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  };
  const link = (href, text) => {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  };
  const status = (text, error) => {
    $("status").textContent = text;
    $("status").className = error ? "status error" : "status";
  };

  async function getJson(url, options) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store", ...options });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message || `${response.status} ${response.statusText}`);
    return body;
  }

  function drawTimeline(c) {
    const box = $("timeline");
    box.replaceChildren();
    const times = [...c.items.flatMap((i) => [i.start, i.end]), ...c.bookmarks.map((b) => b.at)]
      .map((t) => Date.parse(t));
    if (!times.length) {
      box.textContent = t("case.no_ranges");
      $("axis").replaceChildren();
      return;
    }
    let lo = Math.min(...times);
    let hi = Math.max(...times);
    if (hi - lo < 60000) { lo -= 30000; hi += 30000; }
    const x = (t) => `${(100 * (Date.parse(t) - lo)) / (hi - lo)}%`;
    const sources = [...new Set([...c.items.map((i) => i.camera), ...c.bookmarks.map((b) => b.camera)])].sort();
    for (const source of sources) {
      const row = document.createElement("div");
      row.className = "row";
      row.dataset.source = source;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = source;
      row.appendChild(label);
      for (const item of c.items.filter((i) => i.camera === source)) {
        const bar = document.createElement("a");
        bar.className = bodycams.has(source) ? "item bodycam" : "item";
        bar.href = item.playback;
        bar.title = t("case.item_title", { source, start: when(item.start), end: when(item.end), note: item.note || "" });
        bar.style.left = x(item.start);
        bar.style.width = `calc(${x(item.end)} - ${x(item.start)})`;
        row.appendChild(bar);
      }
      for (const mark of c.bookmarks.filter((b) => b.camera === source)) {
        const tick = document.createElement("a");
        tick.className = "mark";
        tick.href = mark.playback;
        tick.title = t("case.mark_title", { at: when(mark.at), note: mark.note || "" });
        tick.style.left = x(mark.at);
        row.appendChild(tick);
      }
      box.appendChild(row);
    }
    const axis = $("axis");
    axis.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) => {
      const span = document.createElement("span");
      span.textContent = window.nvrI18n.time(lo + f * (hi - lo));
      return span;
    }));
  }

  function fillTables(c) {
    const items = $("items").tBodies[0];
    items.replaceChildren();
    for (const item of c.items) {
      const row = items.insertRow();
      cell(row, item.camera);
      whenCell(row, item.start);
      whenCell(row, item.end);
      cell(row, item.note);
      cell(row, item.hold_active ? t("case.held", { hold: item.hold_id }) : t("case.released"));
      cell(row, item.added_by);
      cell(row, "").appendChild(link(item.playback, t("case.play")));
    }
    const marks = $("bookmarks").tBodies[0];
    marks.replaceChildren();
    for (const mark of c.bookmarks) {
      const row = marks.insertRow();
      cell(row, mark.camera);
      whenCell(row, mark.at);
      cell(row, mark.note);
      cell(row, mark.created_by);
      cell(row, "").appendChild(link(mark.playback, t("case.play")));
    }
  }

  async function showExports(c) {
    const list = $("exports");
    list.replaceChildren();
    for (const made of c.exports) {
      const li = document.createElement("li");
      li.id = `export-${made.export_id}`;
      li.textContent = t("case.package_line", { at: when(made.created_at), who: made.created_by, reason: made.reason });
      list.appendChild(li);
      try {
        const job = await getJson(`/api/exports/${made.export_id}`);
        if (job.download) li.appendChild(link(job.download, t("case.download")));
        else li.appendChild(document.createTextNode(job.error || job.state));
      } catch (err) {
        li.appendChild(document.createTextNode(err.message));
      }
    }
  }

  async function showHistory() {
    const body = $("history").tBodies[0];
    const history = await getJson(`${api}/history`);
    body.replaceChildren();
    for (const entry of history.entries) {
      const row = body.insertRow();
      cell(row, entry.id);
      whenCell(row, entry.at);
      cell(row, entry.actor);
      cell(row, entry.action);
      cell(row, entry.camera);
      const { case_id: _id, ...details } = entry.details;
      cell(row, Object.entries(details).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
        .join(" "));
      cell(row, entry.hash_ok ? entry.hash.slice(0, 12) : t("case.edited"), entry.hash_ok ? "" : "bad");
    }
  }

  async function load() {
    const c = await getJson(api);
    document.title = t("case.document_title", { number: c.number });
    $("title").textContent = t("case.heading_full", { number: c.number, title: c.title });
    $("state").textContent = window.nvrI18n.label("case.state", c.state);
    $("state").className = c.state === "open" ? "state" : "state closed";
    $("description").textContent = c.description;
    const facts = [t("case.opened", { at: when(c.created_at), who: c.created_by })];
    if (c.closed_at) facts.push(t("case.closed", { at: when(c.closed_at), who: c.closed_by, reason: c.close_reason }));
    if (c.hidden_items) facts.push(t("case.hidden", { n: c.hidden_items }));
    $("meta").textContent = facts.join(t("list.separator"));
    if (c.playback) {
      $("play-all").href = c.playback;
      $("play-all").hidden = false;
    }
    drawTimeline(c);
    fillTables(c);
    status(t("case.summary", { items: c.items.length, bookmarks: c.bookmarks.length, exports: c.exports.length }));
    await showExports(c);
    await showHistory();
  }

  $("export-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("export").disabled = true;
    try {
      const job = await getJson(`${api}/export`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ reason: $("export-reason").value }),
      });
      status(t("case.queued", { id: job.id.slice(0, 8) }));
      for (let i = 0; i < 600; i += 1) {
        const state = await getJson(`/api/exports/${job.id}`);
        if (state.state === "done" || state.state === "failed") break;
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      await load();
    } catch (err) {
      status(err.message, true);
    } finally {
      $("export").disabled = false;
    }
  });

  $("tz").textContent = t("case.times_in", { zone: window.nvrI18n.timeZone });
  getJson("/api/bodycams").then((b) => { bodycams = new Set(b.bodycams.map((d) => d.id)); })
    .catch(() => {}).finally(() => load().catch((err) => status(err.message, true)));
})();
