// Tollgate console: live pages. The server says when approvals or sessions change (server-sent
// events from /console/events); the page then fetches itself again and swaps in the fresh
// list. While the person is typing in one of its forms, it offers a button instead of moving
// the form under their hands. Without this script every page still works, reloaded by hand.
"use strict";
(() => {
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  const button = document.getElementById("live-refresh");
  const kinds = ((live && live.dataset.kinds) || "").split(" ").filter(Boolean);
  if (!live || !status || !button || kinds.length === 0 || !window.EventSource) return;

  const typing = () =>
    [...live.querySelectorAll("input, textarea, select")].some(
      (field) => field.type !== "hidden" && (field.value !== "" || field === document.activeElement),
    );

  let running = false;
  let again = false;
  async function refresh(force) {
    if (!force && typing()) {
      status.textContent = "There are changes.";
      button.hidden = false;
      return;
    }
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", redirect: "manual" });
      if (response.type === "opaqueredirect" || !response.ok) {
        // Signed out or expired: the page itself shows the way to the sign-in.
        location.reload();
        return;
      }
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("live");
      if (fresh) {
        live.replaceChildren(...fresh.childNodes);
        button.hidden = true;
        status.textContent = "Updated at " + new Date().toLocaleTimeString() + ".";
        live.dataset.updated = String(Number(live.dataset.updated || "0") + 1);
      }
    } finally {
      running = false;
      if (again) {
        again = false;
        refresh(false);
      }
    }
  }

  button.addEventListener("click", () => refresh(true));
  const source = new EventSource("/console/events");
  for (const kind of kinds.concat(["changed"])) {
    source.addEventListener(kind, () => refresh(false));
  }
  source.addEventListener("open", () => {
    live.dataset.listening = "yes";
  });
  // Signed out or the console gone: the server ends the stream for good (204).
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) live.dataset.listening = "no";
  });
})();
