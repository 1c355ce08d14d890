// incident-gateway console: the little the pages need beyond htmx. No inline scripts (the
// Content-Security-Policy forbids them), no eval.
(function () {
  "use strict";
  // "Select all on this page" on the dead letters.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box && box.id === "select-all") {
      document.querySelectorAll('#dead-form input[name="id"]').forEach(function (b) {
        b.checked = box.checked;
      });
    }
  });
  // A session that ended while the page was open: htmx is told where to go (HX-Redirect);
  // an error answer (4xx/5xx) is still shown where the request was aimed, so a refusal reads
  // as text rather than nothing happening.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if (status >= 400 && status !== 401) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
})();
