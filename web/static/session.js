// The signed-in user in the top bar, the language choice, "Sign out", and back to the sign-in page
// when the session ends.
"use strict";

(() => {
  const { t, label } = window.nvrI18n;
  const toLogin = () => {
    location.replace("/login?" + new URLSearchParams({ next: location.pathname + location.search }));
  };

  // Any API answer 401 means the session expired or was ended: sign in again.
  const originalFetch = window.fetch.bind(window);
  window.fetch = async (...args) => {
    const response = await originalFetch(...args);
    if (response.status === 401) toLogin();
    return response;
  };

  // The user's stored language (PUT /api/me/preferences); "auto" forgets it (the browser's language applies).
  function languageChoice(me) {
    const select = document.createElement("select");
    select.id = "session-lang";
    select.setAttribute("aria-label", t("session.language"));
    select.title = t("session.language");
    for (const [value, key] of [["", "session.lang_auto"], ["en", "session.lang_en"], ["fa", "session.lang_fa"]]) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = t(key);
      select.append(option);
    }
    select.value = (me.preferences && me.preferences.lang) || "";
    select.disabled = me.kind !== "session";
    select.addEventListener("change", async () => {
      const response = await originalFetch("/api/me/preferences", {
        method: "PUT", credentials: "same-origin", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ lang: select.value || null }),
      }).catch(() => null);
      if (response && response.ok) location.reload();
    });
    return select;
  }

  async function showUser() {
    const response = await originalFetch("/api/me", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return;
    const me = await response.json();
    const bar = document.querySelector(".topbar .controls, header.bar");
    if (!bar) return;
    const box = document.createElement("span");
    box.className = "session-user";
    box.id = "session-user";
    const name = document.createElement("span");
    name.textContent = t("session.user", { name: me.name, role: label("role", me.role) });
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = t("session.sign_out");
    button.addEventListener("click", async () => {
      await originalFetch("/api/logout", { method: "POST", credentials: "same-origin" }).catch(() => {});
      location.replace("/login");
    });
    box.append(name, languageChoice(me), button);
    bar.append(box);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", showUser);
  else showUser();
})();
