// The page's language, direction and time zone, its strings, and the formatters every page uses.
// Loaded before the page scripts. The daemon fills the data block (web/i18n.py) when it serves the page,
// so <html lang dir> and every string in the HTML are right from the first byte.
// Times: shown in the station's zone with its offset (Solar Hijri calendar and Persian digits in "fa"),
// the Gregorian date and ISO-8601 UTC on hover. Dates are never computed by hand: Intl.DateTimeFormat does it.
"use strict";

window.nvrI18n = (() => {
  const node = document.getElementById("nvr-i18n");
  const data = node ? JSON.parse(node.textContent) : {};
  const lang = data.lang || "en";
  const dir = data.dir || "ltr";
  const timeZone = data.timeZone || "UTC";
  const strings = data.strings || {};
  // 24-hour clocks; Persian: Solar Hijri calendar and Persian digits.
  const locale = lang === "fa" ? "fa-IR-u-ca-persian-nu-arabext" : "en-GB-u-ca-gregory-nu-latn";
  const gregorian = lang === "fa" ? "fa-IR-u-ca-gregory-nu-arabext" : "en-GB-u-ca-gregory-nu-latn";
  const base = { timeZone, hourCycle: "h23" };
  const formats = {
    dateTime: new Intl.DateTimeFormat(locale, { ...base, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "shortOffset" }),
    dateTimeLong: new Intl.DateTimeFormat(locale, { ...base, weekday: "long", year: "numeric", month: "long",
      day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "shortOffset" }),
    date: new Intl.DateTimeFormat(locale, { ...base, year: "numeric", month: "2-digit", day: "2-digit" }),
    time: new Intl.DateTimeFormat(locale, { ...base, hour: "2-digit", minute: "2-digit", second: "2-digit" }),
    minute: new Intl.DateTimeFormat(locale, { ...base, hour: "2-digit", minute: "2-digit" }),
    millis: new Intl.DateTimeFormat(locale, { ...base, hour: "2-digit", minute: "2-digit", second: "2-digit",
      fractionalSecondDigits: 1 }),
    gregorian: new Intl.DateTimeFormat(gregorian, { ...base, year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "shortOffset" }),
    // For arithmetic only (the zone's wall clock as numbers), never shown.
    parts: new Intl.DateTimeFormat("en-US-u-ca-gregory-nu-latn", { ...base, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" }),
  };
  const numbers = new Intl.NumberFormat(locale);

  function number(value, options) {
    return options ? new Intl.NumberFormat(locale, options).format(value) : numbers.format(value);
  }

  /** The catalogue string for key with {name} placeholders filled (numbers in the page's digits). */
  function t(key, params) {
    const template = strings[key] ?? key;
    if (!params) return template;
    return template.replace(/\{([a-z0-9_]+)\}/gi, (whole, name) => {
      if (!(name in params)) return whole;
      const value = params[name];
      return typeof value === "number" ? number(value) : String(value);
    });
  }

  /** The catalogue's name for a code the daemon sends (zone, state, cause...); the code itself when it has none. */
  function label(prefix, code) {
    const key = `${prefix}.${code}`;
    return strings[key] ?? String(code ?? "").replaceAll("_", " ");
  }

  const valid = (ms) => Number.isFinite(ms);
  const fmt = (kind) => (ms) => (valid(ms) ? formats[kind].format(new Date(ms)) : "");

  /** Wall-clock fields of an instant in the station zone (Gregorian numbers). */
  function wall(ms) {
    const out = {};
    for (const part of formats.parts.formatToParts(new Date(ms))) {
      if (part.type !== "literal") out[part.type] = Number(part.value);
    }
    if (out.hour === 24) out.hour = 0;
    return out;
  }

  /** The station zone's offset from UTC at an instant, in minutes. */
  function offsetMinutes(ms) {
    const w = wall(ms);
    const asUtc = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second);
    return Math.round((asUtc - Math.floor(ms / 1000) * 1000) / 60000);
  }

  const pad = (n, width = 2) => String(n).padStart(width, "0");

  /** "YYYY-MM-DDTHH:MM:SS" in the station zone, for <input type="datetime-local">. */
  function toInput(ms) {
    const w = wall(ms);
    return `${pad(w.year, 4)}-${pad(w.month)}-${pad(w.day)}T${pad(w.hour)}:${pad(w.minute)}:${pad(w.second)}`;
  }

  /** A datetime-local value read as the station's wall clock (not the browser's); NaN when invalid.
   *  In a daylight-saving fold (the hour that happens twice) the earlier instant is taken; a time skipped
   *  by a spring-forward change is read with the offset from before it. */
  function fromInput(value) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(value || "");
    if (!m) return NaN;
    const target = `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6] || "00"}`;
    const asUtc = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
    const before = offsetMinutes(asUtc - 86400000);
    const offsets = new Set([before, offsetMinutes(asUtc), offsetMinutes(asUtc + 86400000)]);
    const matches = [...offsets].map((off) => asUtc - off * 60000).filter((ms) => toInput(ms) === target);
    return matches.length ? Math.min(...matches) : asUtc - before * 60000;
  }

  function isoUtc(ms) { return new Date(ms).toISOString().replace(".000Z", "Z"); }

  /** Hover text for a shown time: the Gregorian date in the station zone and the instant in UTC. */
  function hover(ms) {
    return valid(ms) ? t("time.hover", { gregorian: formats.gregorian.format(new Date(ms)), utc: isoUtc(ms) }) : "";
  }

  /** A <time> element: station-zone text, machine-readable UTC, Gregorian and UTC on hover. */
  function timeElement(ms, kind = "dateTime") {
    const el = document.createElement("time");
    el.dateTime = valid(ms) ? isoUtc(ms) : "";
    el.textContent = fmt(kind)(ms);
    el.title = hover(ms);
    return el;
  }

  /** "1 h 2 min 3 s" style durations from the catalogue. */
  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return t("duration.hms", { h, m, s: r });
    if (m) return t("duration.ms", { m, s: r });
    return t("duration.s", { s: r });
  }

  /** "12 s ago" / "5 min ago" / a date, for an ISO time or milliseconds. */
  function ago(when) {
    const ms = typeof when === "number" ? when : Date.parse(when);
    if (!valid(ms)) return "";
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 90) return t("time.seconds_ago", { n: seconds });
    if (seconds < 5400) return t("time.minutes_ago", { n: Math.round(seconds / 60) });
    if (seconds < 86400) return t("time.hours_ago", { n: Math.round(seconds / 3600) });
    return fmt("dateTime")(ms);
  }

  /** Fill elements marked data-i18n-title / data-i18n-aria with their catalogue strings. */
  function translateAttributes(root = document) {
    root.querySelectorAll("[data-i18n-title]").forEach((el) => { el.title = t(el.dataset.i18nTitle); });
    root.querySelectorAll("[data-i18n-aria]").forEach((el) => el.setAttribute("aria-label", t(el.dataset.i18nAria)));
  }

  return {
    lang, dir, timeZone, locale, t, label, number, duration, ago, hover, timeElement, toInput, fromInput, isoUtc,
    offsetMinutes, translateAttributes,
    dateTime: fmt("dateTime"), dateTimeLong: fmt("dateTimeLong"), date: fmt("date"), time: fmt("time"),
    minute: fmt("minute"), millis: fmt("millis"),
  };
})();
