// batchwatch's status pages: the one script, and all it does. Every page works without it.
// - Live refresh: every `data-refresh` seconds (on <body>) the page is fetched again and its
//   content swapped in place, keeping the scroll position and the open details. It waits while
//   the tab is hidden, text is selected or a field has the focus; the "live" switch in the
//   header stops it.
// - Local times: each absolute time (`.abs[data-at]`, shown in UTC) is shown in the browser's
//   zone as well when that zone is not UTC.
"use strict";

(function () {
  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function zoneName(date) {
    var parts = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(date);
    var zone = parts.find(function (p) { return p.type === "timeZoneName"; });
    return zone ? zone.value : "local";
  }

  function localTimes(root) {
    root.querySelectorAll(".abs[data-at]").forEach(function (el) {
      var at = new Date(el.dataset.at);
      if (isNaN(at.getTime()) || at.getTimezoneOffset() === 0) {
        return;
      }
      var local = at.getFullYear() + "-" + pad(at.getMonth() + 1) + "-" + pad(at.getDate()) +
        " " + pad(at.getHours()) + ":" + pad(at.getMinutes()) + ":" + pad(at.getSeconds());
      el.title = el.textContent;
      el.textContent = local + " " + zoneName(at);
    });
  }

  function busy() {
    var focused = document.activeElement;
    var typing = focused && focused.matches("input[type=search], input[type=text], select");
    var selection = window.getSelection();
    return document.hidden || typing || (selection && !selection.isCollapsed);
  }

  function swap(fresh) {
    var main = document.querySelector("main");
    var next = fresh.querySelector("main");
    if (!main || !next) {
      return;
    }
    var open = Array.from(document.querySelectorAll("details[open][id]"), function (d) {
      return d.id;
    });
    var x = window.scrollX;
    var y = window.scrollY;
    main.replaceWith(document.adoptNode(next));
    open.forEach(function (id) {
      var details = document.getElementById(id);
      if (details) {
        details.open = true;
      }
    });
    var asof = document.querySelector(".asof");
    var freshAsof = fresh.querySelector(".asof");
    if (asof && freshAsof) {
      asof.replaceWith(document.adoptNode(freshAsof));
    }
    document.title = fresh.title;
    localTimes(document);
    window.scrollTo(x, y);
  }

  function refresh(live) {
    if (!live.checked || busy()) {
      return Promise.resolve();
    }
    return fetch(window.location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        var html = (response.headers.get("content-type") || "").startsWith("text/html");
        return response.ok && html ? response.text() : null;
      })
      .then(function (text) {
        if (text !== null) {
          swap(new DOMParser().parseFromString(text, "text/html"));
        }
      })
      .catch(function () {
        // The daemon may be restarting: the next tick tries again.
      });
  }

  function start() {
    localTimes(document);
    var seconds = Number(document.body.dataset.refresh);
    var live = document.querySelector(".live");
    if (!live || !(seconds > 0)) {
      return;
    }
    live.hidden = false;
    var box = live.querySelector("input");
    function tick() {
      refresh(box).then(function () {
        window.setTimeout(tick, seconds * 1000);
      });
    }
    window.setTimeout(tick, seconds * 1000);
  }

  start();
})();
