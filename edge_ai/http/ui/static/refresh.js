// edge_ai dashboard: replaces the live part of the page every few seconds with /ui/live, from this node
// only. Pauses while the tab is hidden; a session that ended shows the sign-in form again.
(function () {
  "use strict";
  var PERIOD_MS = 3000;
  var live = document.getElementById("live");
  var updated = document.getElementById("updated");
  if (!live) { return; }
  var busy = false;

  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(live.getAttribute("data-live-url"), { credentials: "same-origin", cache: "no-store",
                                                headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        var focused = document.activeElement && live.contains(document.activeElement) ? document.activeElement.id : "";
        live.innerHTML = html;
        if (focused) { var again = document.getElementById(focused); if (again) { again.focus(); } }
        var grid = live.querySelector("[data-now]");
        if (updated && grid) { updated.textContent = "Updated " + grid.getAttribute("data-now"); }
      })
      .catch(function () { if (updated) { updated.textContent = "Cannot reach the node; trying again"; } })
      .then(function () { busy = false; });
  }

  window.setInterval(refresh, PERIOD_MS);
  document.addEventListener("visibilitychange", refresh);
})();
