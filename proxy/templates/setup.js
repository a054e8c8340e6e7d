// cipa-proxy setup page: does this browser trust the district CA? Opens the steps for this device.
// The check loads an image from https://<setup host>/trust-check.png. The proxy answers that
// name itself with a certificate signed by the district CA, so the image loads only when the
// browser trusts the CA; a certificate error fails it. No data leaves the page.
"use strict";
(function () {
  var box = document.getElementById("trust-check");
  var url = box && box.getAttribute("data-check-url");

  function show(state) {
    box.setAttribute("data-state", state);
    var items = box.querySelectorAll("[data-when]");
    for (var i = 0; i < items.length; i++) {
      items[i].hidden = items[i].getAttribute("data-when") !== state;
    }
  }

  if (url) {
    var done = false;
    var finish = function (state) {
      if (!done) {
        done = true;
        show(state);
      }
    };
    var timer = setTimeout(function () { finish("unknown"); }, 15000);
    var img = new Image();
    img.onload = function () { clearTimeout(timer); finish("trusted"); };
    img.onerror = function () { clearTimeout(timer); finish("untrusted"); };
    img.src = url + "?t=" + Date.now();
  }

  var ua = navigator.userAgent;
  var ids = [];
  if (/CrOS/.test(ua)) ids.push("chromeos");
  else if (/iPhone|iPad|iPod/.test(ua) || (/Macintosh/.test(ua) && navigator.maxTouchPoints > 1)) ids.push("ios");
  else if (/Android/.test(ua)) ids.push("android");
  else if (/Windows/.test(ua)) ids.push("windows");
  else if (/Macintosh/.test(ua)) ids.push("macos");
  else if (/Linux/.test(ua)) ids.push("linux");
  if (/Firefox\//.test(ua)) ids = ["firefox"];
  for (var j = 0; j < ids.length; j++) {
    var steps = document.getElementById("steps-" + ids[j]);
    if (steps) steps.open = true;
  }
})();
