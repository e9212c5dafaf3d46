/*
 * A stand-in for the polling script of django-async-downloads 0.5, written for the tests from
 * its documented behaviour: pages that have not migrated yet still run a script like this one,
 * without {% async_downloads_head %}.
 *
 * <script src="…" id="async-downloads-script" data-url="{% url 'async_downloads:ajax_update' %}"
 *         data-clear-url="{% url 'async_downloads:ajax_clear_download' %}"></script>
 */
$(function () {
  if ($("#async-downloads").length === 0) return;

  var script = $("#async-downloads-script");
  var updateUrl = script.data("url");
  var clearUrl = script.data("clear-url");
  var timer = null;

  // Django's CSRF recipe for jQuery: the csrftoken cookie goes into X-CSRFToken on unsafe requests.
  function cookie(name) {
    var found = null;
    document.cookie.split(";").forEach(function (part) {
      var pair = part.trim().split("=");
      if (pair[0] === name) found = decodeURIComponent(pair.slice(1).join("="));
    });
    return found;
  }
  $.ajaxSetup({
    beforeSend: function (xhr, options) {
      if (!/^(GET|HEAD|OPTIONS|TRACE)$/.test(options.type) && !this.crossDomain) {
        xhr.setRequestHeader("X-CSRFToken", cookie("csrftoken"));
      }
    }
  });

  function poll() {
    clearTimeout(timer);
    timer = null;
    $.getJSON(updateUrl).done(function (data) {
      $("#async-downloads .dropdown-menu").html(data.html);
      $("#async-downloads").toggleClass("in-progress", Boolean(data.in_progress));
      if (data.in_progress && timer === null) timer = setTimeout(poll, 1000);
    });
  }

  $(document).on("click", ".download-clear", function (event) {
    event.preventDefault();
    var filepath = $(this).closest(".download-container").data("filepath");
    $.post(clearUrl, {filepath: filepath}).always(poll);
  });

  poll();
});
