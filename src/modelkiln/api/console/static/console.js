// Kiln console: keeps the jobs list and a running job's page current by polling JSON under /console/.
// Everything from the server is set as text (textContent), never as markup.
(function () {
  "use strict";
  var body = document.body;

  function poll(url, handle, delayOf) {
    function tick() {
      fetch(url(), { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) { window.location.assign("/console/sign-in"); return null; }
          return r.ok ? r.json() : null;
        })
        .then(function (data) {
          var again = data ? handle(data) : true;
          if (again !== false) { window.setTimeout(tick, delayOf(data)); }
        })
        .catch(function () { window.setTimeout(tick, 5000); });
    }
    window.setTimeout(tick, 1000);
  }

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text) { node.textContent = text; }
    if (cls) { node.className = cls; }
    return node;
  }

  function actionForm(name, action, label, cls) {
    var form = el("form");
    form.method = "post";
    form.action = "/console/jobs/" + encodeURIComponent(name) + "/" + action;
    var csrf = el("input");
    csrf.type = "hidden"; csrf.name = "csrf"; csrf.value = body.dataset.csrf;
    var button = el("button", label, cls);
    button.type = "submit";
    form.appendChild(csrf); form.appendChild(button);
    return form;
  }

  function jobRow(job) {
    var tr = el("tr");
    tr.dataset.job = job.name;
    var link = el("a", job.name);
    link.href = "/console/jobs/" + encodeURIComponent(job.name);
    var name = el("td"); name.appendChild(link); tr.appendChild(name);
    var status = el("td"); status.appendChild(el("span", job.status, "status status-" + job.status.toLowerCase()));
    tr.appendChild(status);
    [job.framework, job.target, job.created, job.finished, job.duration].forEach(function (value) {
      tr.appendChild(el("td", value));
    });
    var actions = el("td", "", "actions");
    if (job.can_stop) { actions.appendChild(actionForm(job.name, "stop", "Stop", "")); }
    if (job.can_delete) { actions.appendChild(actionForm(job.name, "delete", "Delete", "danger")); }
    tr.appendChild(actions);
    return tr;
  }

  function followJobs() {
    var rows = document.getElementById("job-rows");
    var empty = document.getElementById("no-jobs");
    poll(function () { return body.dataset.poll; }, function (data) {
      var fresh = document.createDocumentFragment();
      data.jobs.forEach(function (job) { fresh.appendChild(jobRow(job)); });
      rows.replaceChildren(fresh);
      empty.hidden = data.jobs.length > 0;
      return true;
    }, function (data) { return data && data.active ? 1500 : 4000; });
  }

  function followJob() {
    var log = document.getElementById("log");
    var next = parseInt(body.dataset.logNext, 10) || 0;
    var stick = true;
    log.scrollTop = log.scrollHeight;
    log.addEventListener("scroll", function () {
      stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    });
    poll(function () { return body.dataset.log + "?after=" + next; }, function (data) {
      data.lines.forEach(function (line) {
        log.appendChild(el("span", line.t, "t"));
        log.appendChild(document.createTextNode(" " + line.text + "\n"));
      });
      next = data.next;
      if (stick) { log.scrollTop = log.scrollHeight; }
      var status = document.getElementById("job-status");
      status.textContent = data.status;
      status.className = "status status-" + data.status.toLowerCase();
      document.getElementById("job-duration").textContent = data.duration || "—";
      if (!data.active) {  // finished: the page itself now has the report, the reason and the downloads
        window.location.reload();
        return false;
      }
      return true;
    }, function () { return 1000; });
  }

  if (body.dataset.page === "jobs") { followJobs(); }
  if (body.dataset.page === "job" && body.dataset.active === "yes") { followJob(); }
}());
