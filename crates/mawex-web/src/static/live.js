// mawex: live fragments. Each element with data-live holds a server-rendered fragment; the
// server sends its new HTML over Server-Sent Events when it changes (at most once a second).
// Where EventSource is missing or keeps failing, the fragment is fetched every two seconds.
(function () {
  "use strict";
  // While someone types in a live fragment's form, its updates wait (15 s after the last
  // key, or until the form is saved), so that what is typed is not replaced; the latest
  // one is applied then.
  var editingUntil = 0;
  var waiting = [];
  function flush() {
    if (Date.now() < editingUntil) { return; }
    var updates = waiting;
    waiting = [];
    updates.forEach(function (update) { swap(update[0], update[1]); });
  }
  document.addEventListener("input", function (event) {
    var field = event.target;
    if (field.type === "checkbox" || field.type === "radio") { return; }
    if (field.closest && field.closest("[data-live]")) {
      editingUntil = Date.now() + 15000;
      window.setTimeout(flush, 15100);
    }
  });
  // A form saved (see below): updates apply again.
  document.addEventListener("mawex:sent", function () { editingUntil = 0; flush(); });
  // A new fragment in place of the old, with the boxes that were ticked still ticked.
  function swap(element, html) {
    if (Date.now() < editingUntil) {
      waiting = waiting.filter(function (update) { return update[0] !== element; });
      waiting.push([element, html]);
      return;
    }
    // Unchanged (the first event repeats what the page was rendered with): the elements
    // stay, so that a click on one of them is never lost to its replacement.
    var incoming = document.createElement("template");
    incoming.innerHTML = html;
    if (incoming.innerHTML === element.innerHTML) { return; }
    var ticked = {};
    var boxes = 'input[type="checkbox"][name]';
    element.querySelectorAll(boxes).forEach(function (box) {
      if (box.checked) { ticked[box.name + "=" + box.value] = true; }
    });
    element.innerHTML = html;
    element.querySelectorAll(boxes).forEach(function (box) {
      if (ticked[box.name + "=" + box.value]) { box.checked = true; }
    });
  }
  // A box with data-tick-all="NAME" ticks or clears every box named NAME.
  document.addEventListener("change", function (event) {
    var all = event.target;
    if (!all.hasAttribute || !all.hasAttribute("data-tick-all")) { return; }
    var name = all.getAttribute("data-tick-all");
    document.querySelectorAll('input[type="checkbox"]').forEach(function (box) {
      if (box.name === name) { box.checked = all.checked; }
    });
  });
  // One timer a page at most, stopped when the stream is back.
  var polling = null;
  function poll(element, url) {
    if (polling !== null) { return; }
    polling = window.setInterval(function () {
      fetch(url, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) { swap(element, html); } })
        .catch(function () {});
    }, 2000);
  }
  function stopPolling() {
    if (polling !== null) { window.clearInterval(polling); polling = null; }
  }
  // A page keeps one connection open while it is shown: a hidden tab, or a page left for
  // another (kept in the back-forward cache), closes it, so that open tabs do not use up
  // the browser's few connections to the dashboard.
  function follow(element) {
    var url = element.getAttribute("data-live");
    if (!window.EventSource) { poll(element, url); return; }
    var source = null;
    var failures = 0;
    function open() {
      if (source !== null) { return; }
      failures = 0;
      source = new EventSource("/events?fragment=" + encodeURIComponent(url));
      source.addEventListener("fragment", function (event) {
        failures = 0;
        stopPolling();
        swap(element, event.data);
        element.setAttribute("data-updated", String(Date.now()));
      });
      source.onerror = function () {
        failures += 1;
        if (failures >= 3) { close(); poll(element, url); }
      };
    }
    function close() {
      if (source !== null) { source.close(); source = null; }
    }
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { close(); } else { open(); }
    });
    window.addEventListener("pagehide", close);
    window.addEventListener("pageshow", function () { if (!document.hidden) { open(); } });
    open();
  }
  document.querySelectorAll("[data-live]").forEach(follow);
})();

// Bulk actions: a form with data-json is sent as JSON to its URL, first as a dry run whose
// count is shown for confirmation, then for real. The answer (or the refusal) is shown.
(function () {
  "use strict";
  function send(url, fields) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(fields)
    }).then(function (response) {
      return response.json().then(function (body) { return { ok: response.ok, body: body }; });
    });
  }
  // A form's fields as JSON: a name "a.b" nests, "x[]" collects a list, a number input
  // gives a number, an input marked data-json-value gives the JSON of its value, a blank
  // field is left out (null if marked data-blank-null); the button that sent the form adds
  // its name and value.
  function fieldsOf(form, submitter) {
    var fields = {};
    var numbers = {};
    var json = {};
    var nulls = {};
    Array.prototype.forEach.call(form.elements, function (input) {
      if (input.type === "number") { numbers[input.name] = true; }
      if (input.hasAttribute("data-json-value")) { json[input.name] = true; }
      if (input.hasAttribute("data-blank-null")) { nulls[input.name] = true; }
    });
    var data = new FormData(form);
    if (submitter && submitter.name) { data.append(submitter.name, submitter.value); }
    data.forEach(function (value, key) {
      if (value === "") {
        if (!nulls[key]) { return; }
        value = null;
      } else {
        if (numbers[key]) { value = Number(value); }
        if (json[key]) { value = JSON.parse(value); }
      }
      var target = fields;
      var parts = key.split(".");
      while (parts.length > 1) {
        var part = parts.shift();
        target = target[part] = target[part] || {};
      }
      var name = parts[0];
      if (name.slice(-2) === "[]") {
        name = name.slice(0, -2);
        (target[name] = target[name] || []).push(value);
      } else {
        target[name] = value;
      }
    });
    return fields;
  }
  function show(form, text) {
    var result = document.querySelector("[data-result]");
    if (result) { result.textContent = text; }
  }
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-json")) { return; }
    event.preventDefault();
    var fields = fieldsOf(form, event.submitter);
    var url = form.getAttribute("data-json");
    if (form.hasAttribute("data-edit")) {
      // The form's fields are the new value: sent at once, the answer shown.
      fetch(url, { method: form.getAttribute("data-method") || "PUT", credentials: "same-origin",
                   headers: { "content-type": "application/json" },
                   body: JSON.stringify(fields) })
        .then(function (response) {
          if (response.ok) {
            document.dispatchEvent(new Event("mawex:sent"));
            show(form, "Saved.");
            return;
          }
          return response.json().then(function (body) { show(form, body.error.message); });
        });
      return;
    }
    if (form.hasAttribute("data-direct")) {
      // One action, no count to ask: confirmed, then sent.
      if (!window.confirm(form.getAttribute("data-confirm"))) { return; }
      fetch(url, { method: form.getAttribute("data-method") || "POST", credentials: "same-origin",
                   headers: { "content-type": "application/json" },
                   body: form.getAttribute("data-body") || "{}" })
        .then(function (response) {
          if (response.ok) { show(form, "Done."); return; }
          return response.json().then(function (body) { show(form, body.error.message); });
        });
      return;
    }
    fields.dry_run = true;
    send(url, fields).then(function (answer) {
      if (!answer.ok) { show(form, answer.body.error.message); return; }
      if (!window.confirm(answer.body.count + " match. " + form.getAttribute("data-confirm"))) { return; }
      fields.dry_run = false;
      send(url, fields).then(function (done) {
        show(form, done.ok ? done.body.count + " done." : done.body.error.message);
      });
    });
  });
})();
