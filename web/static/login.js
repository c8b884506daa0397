// Sign-in: POST /api/login (same origin, JSON); the daemon sets an HttpOnly session cookie.
"use strict";

(() => {
  const form = document.getElementById("login");
  const error = document.getElementById("error");
  const submit = document.getElementById("submit");

  // The page to return to. The daemon checks it (web/access.py safe_next) and answers it back only if
  // it is a path on this site; the browser checks again: same origin after URL parsing, no control
  // characters or backslashes (browsers drop tabs and newlines, so "/\t/evil.example" is "//evil.example").
  const requested = new URLSearchParams(location.search).get("next") || "/";

  function sameSite(next) {
    if (typeof next !== "string" || !next.startsWith("/") || next.startsWith("//")) return "/";
    if (/[\u0000-\u001f\u007f\\]/.test(next)) return "/";
    try {
      const url = new URL(next, location.origin);
      return url.origin === location.origin ? url.pathname + url.search + url.hash : "/";
    } catch (err) {
      return "/";
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    submit.disabled = true;
    try {
      const response = await fetch("/api/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          username: document.getElementById("username").value,
          password: document.getElementById("password").value,
          next: requested,
        }),
      });
      if (response.ok) {
        const body = await response.json().catch(() => ({}));
        location.replace(sameSite(body.next));
        return;
      }
      const body = await response.json().catch(() => ({}));
      error.textContent = body.message || nvrI18n.t("login.failed", { status: response.status });
      document.getElementById("password").value = "";
    } catch (err) {
      error.textContent = nvrI18n.t("login.unreachable");
    } finally {
      submit.disabled = false;
    }
  });
})();
