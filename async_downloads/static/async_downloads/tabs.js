/* django-async-downloads: tell this browser's other tabs that a download started.
 *
 * An idle download centre holds no connection; it asks the server every
 * ASYNC_DOWNLOADS_IDLE_POLL_INTERVAL seconds, or at once on the
 * "async-downloads:started" event on <body>. When this tab's centre goes busy
 * (its connection element becomes the streaming or polling one, at page load
 * or after a swap) or this page gets that event from the server, the other
 * tabs of the same origin hear it over a BroadcastChannel and trigger the
 * event on their own <body>: their idle centre asks the server, then connects
 * as usual. Messages carry nothing but "started"; a tab asks the server with
 * its own session, so a tab of another user merely polls once for nothing.
 *
 * No loops: a relayed event is not sent on, nor is a tab's going busy within
 * a few seconds after a relay (that is the relay's own doing). No storms:
 * a tab sends at most once a second, and relays at most once a second (one
 * more relay at the end of that second if more messages came meanwhile).
 * WS mode does not load this script (the socket is always open). Without
 * BroadcastChannel it does nothing, and other devices keep the idle poll.
 */
(function () {
  "use strict";
  if (typeof window.BroadcastChannel !== "function") return;

  var CHANNEL = "async-downloads";
  var MESSAGE = "started";
  var EVENT = "async-downloads:started";
  var QUIET_MS = 1000; // at most one message sent, and one relay, per second
  var RELAY_MS = 5000; // going busy this soon after a relay is not announced

  var channel = null;
  var wasBusy = false;
  var lastSent = -Infinity;
  var lastRelay = -Infinity;
  var lastTriggered = -Infinity;
  var relayTimer = null;

  function now() {
    return Date.now();
  }

  /* "busy" (a stream or the polling transport's poll), "idle", or "" (no centre, WS mode). */
  function centreState() {
    var element = document.getElementById("async-downloads-connection");
    if (!element || element.hasAttribute("ws-connect")) return "";
    if (element.hasAttribute("sse-connect")) return "busy";
    var url = element.getAttribute("hx-get");
    if (!url) return "";
    return /[?&]idle=/.test(url) ? "idle" : "busy";
  }

  function send(afterRelay) {
    var time = now();
    if (!channel || time - lastSent < QUIET_MS) return;
    if (afterRelay && time - lastRelay < RELAY_MS) return;
    lastSent = time;
    try {
      channel.postMessage(MESSAGE);
    } catch (error) {
      /* a closed channel: nothing to tell */
    }
  }

  function check() {
    var busy = centreState() === "busy";
    if (busy && !wasBusy) send(true);
    wasBusy = busy;
  }

  function trigger() {
    relayTimer = null;
    if (centreState() !== "idle" || !document.body) return;
    lastTriggered = now();
    document.body.dispatchEvent(
      new CustomEvent(EVENT, { bubbles: true, detail: { relayed: true } })
    );
  }

  function receive(event) {
    if (event.data !== MESSAGE || centreState() !== "idle") return;
    lastRelay = now();
    if (relayTimer === null) {
      relayTimer = setTimeout(trigger, Math.max(0, lastTriggered + QUIET_MS - lastRelay));
    }
  }

  function open() {
    try {
      channel = new BroadcastChannel(CHANNEL);
    } catch (error) {
      channel = null; // e.g. an opaque origin
      return;
    }
    channel.onmessage = receive;
  }

  function close() {
    if (channel) channel.close();
    channel = null;
  }

  open();
  // The server's event (HX-Trigger of a start or a retry) bubbles up from the
  // element that made the request; the one relayed here is marked.
  document.addEventListener(EVENT, function (event) {
    if (!(event.detail && event.detail.relayed)) send(false);
  });
  // Swaps, out-of-band ones included, end with htmx:load on the new content.
  document.addEventListener("htmx:load", check);
  document.addEventListener("htmx:afterSettle", check);
  document.addEventListener("DOMContentLoaded", check);
  // Keep the page fit for the back/forward cache, and listening again when restored.
  window.addEventListener("pagehide", close);
  window.addEventListener("pageshow", function () {
    if (!channel) open();
    check();
  });
  check();
})();
