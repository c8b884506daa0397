// Sign-in: POST /api/login (same origin, JSON); the daemon sets an HttpOnly session cookie.
"use strict";

(() => {
  const form = document.getElementById("login");
  const error = document.getElementById("error");
  const submit = document.getElementById("submit");

  // Only a path on this site: never an absolute or protocol-relative URL (no open redirect).
  function nextPage() {
    const next = new URLSearchParams(location.search).get("next") || "/";
    return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
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
        }),
      });
      if (response.ok) {
        location.replace(nextPage());
        return;
      }
      const body = await response.json().catch(() => ({}));
      error.textContent = body.message || `Sign-in failed (${response.status})`;
      document.getElementById("password").value = "";
    } catch (err) {
      error.textContent = "The server cannot be reached.";
    } finally {
      submit.disabled = false;
    }
  });
})();
