// The signed-in user in the top bar, "Sign out", and back to the sign-in page when the session ends.
"use strict";

(() => {
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
    name.textContent = `${me.name} (${me.role})`;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Sign out";
    button.addEventListener("click", async () => {
      await originalFetch("/api/logout", { method: "POST", credentials: "same-origin" }).catch(() => {});
      location.replace("/login");
    });
    box.append(name, button);
    bar.append(box);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", showUser);
  else showUser();
})();
