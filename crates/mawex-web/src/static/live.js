// mawex: live fragments. Each element with data-live holds a server-rendered fragment; the
// server sends its new HTML over Server-Sent Events when it changes (at most once a second).
// Where EventSource is missing or keeps failing, the fragment is fetched every two seconds.
(function () {
  "use strict";
  function poll(element, url) {
    window.setInterval(function () {
      fetch(url, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) { element.innerHTML = html; } })
        .catch(function () {});
    }, 2000);
  }
  function follow(element) {
    var url = element.getAttribute("data-live");
    if (!window.EventSource) { poll(element, url); return; }
    var failures = 0;
    var source = new EventSource("/events?fragment=" + encodeURIComponent(url));
    source.addEventListener("fragment", function (event) {
      failures = 0;
      element.innerHTML = event.data;
      element.setAttribute("data-updated", String(Date.now()));
    });
    source.onerror = function () {
      failures += 1;
      if (failures >= 3) { source.close(); poll(element, url); }
    };
  }
  document.querySelectorAll("[data-live]").forEach(follow);
})();
