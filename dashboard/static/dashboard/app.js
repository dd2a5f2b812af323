/* EmbedHub dashboard: small helpers plus the live parts of pages (job progress, upload,
   health, charts). No framework; every page works without JS except the live updates. */
(function () {
  "use strict";

  const EH = {};
  window.EH = EH;

  // ------------------------------------------------------------------ basics

  EH.esc = function (value) {
    return String(value == null ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  };

  EH.csrfToken = function () {
    const meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) return meta.content;
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  };

  // JSON over the REST API with the session cookie; errors come back as Error(message).
  EH.api = async function (url, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers);
    if (opts.method && opts.method !== "GET") opts.headers["X-CSRFToken"] = EH.csrfToken();
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    const response = await fetch(url, opts);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const err = new Error(EH.errorMessage(body, response));
      err.status = response.status;
      err.body = body;
      throw err;
    }
    return body;
  };

  EH.errorMessage = function (body, response) {
    if (body && body.error) return body.error.message || body.error.code;
    if (body && body.detail) return body.detail;
    return "HTTP " + (response ? response.status : "error");
  };

  EH.duration = function (seconds) {
    if (seconds == null || isNaN(seconds)) return "—";
    seconds = Math.round(seconds);
    if (seconds < 60) return seconds + "s";
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + "m " + String(s).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  };

  EH.rate = function (value) {
    if (value == null || isNaN(value)) return "—";
    return value >= 100 ? Math.round(value).toLocaleString() : value.toFixed(1);
  };

  // HH:MM:SS in UTC, as the server renders times (TIME_ZONE is UTC).
  EH.time = function (iso) {
    if (!iso) return "";
    return new Date(iso).toISOString().substring(11, 19);
  };

  EH.setBar = function (el, percent, status) {
    if (!el) return;
    const bar = el.querySelector(".bar");
    el.classList.remove("done", "failed", "indeterminate");
    if (status === "succeeded") el.classList.add("done");
    if (status === "failed") el.classList.add("failed");
    if (percent == null) {
      if (status === "running") el.classList.add("indeterminate");
      bar.style.width = status === "succeeded" ? "100%" : "0";
    } else {
      bar.style.width = Math.max(0, Math.min(100, percent)).toFixed(1) + "%";
    }
    el.setAttribute("aria-valuenow", percent == null ? "" : Math.round(percent));
  };

  document.addEventListener("DOMContentLoaded", function () {
    const section = document.body.dataset.section;
    document.querySelectorAll("[data-nav]").forEach(function (a) {
      if (a.dataset.nav === section) a.classList.add("active");
    });
    // Confirm destructive or consequential buttons (cancel, promote, rollback).
    document.querySelectorAll("[data-confirm]").forEach(function (el) {
      el.addEventListener("click", function (ev) {
        if (!window.confirm(el.dataset.confirm)) ev.preventDefault();
      });
    });
  });

  // ------------------------------------------------------------------ overview health

  EH.loadHealth = async function (url) {
    const workersEl = document.getElementById("health-workers");
    const queuesEl = document.getElementById("health-queues");
    const detailEl = document.getElementById("health-detail");
    try {
      const h = await EH.api(url);
      const w = h.workers, q = h.queues;
      workersEl.innerHTML = w.ok
        ? '<span class="dot ok"></span>' + w.workers.length + " online"
        : '<span class="dot bad"></span>none';
      const lengths = q.ok ? Object.entries(q.queues).map(([k, v]) => k + ": " + v).join(" · ") : "";
      queuesEl.textContent = lengths ? "waiting — " + lengths : "";
      let html = "";
      if (w.ok) {
        html += "<p><strong>Workers answering a ping</strong></p><ul style='margin:0 0 10px;padding-left:18px'>";
        w.workers.forEach((name) => { html += '<li><span class="dot ok"></span><code>' + EH.esc(name) + "</code></li>"; });
        html += "</ul>";
      } else {
        html += '<div class="alert error" style="margin-bottom:10px">No worker answered within 0.5 s. ' +
          "Jobs will wait in the queue until one starts: <code>celery -A embedhub worker -Q cpu,gpu</code>" +
          (w.error ? "<br><span class='small'>" + EH.esc(w.error) + "</span>" : "") + "</div>";
      }
      if (q.ok) {
        html += "<table><thead><tr><th>Queue</th><th class='num'>Messages waiting</th></tr></thead><tbody>";
        Object.entries(q.queues).forEach(([name, n]) => {
          html += "<tr><td><code>" + EH.esc(name) + "</code></td><td class='num'>" + n + "</td></tr>";
        });
        html += "</tbody></table>";
      } else {
        html += '<div class="alert error">' + EH.esc(q.error) + "</div>";
      }
      detailEl.innerHTML = html;
    } catch (e) {
      workersEl.innerHTML = '<span class="dot bad"></span>unknown';
      detailEl.innerHTML = '<div class="alert error">Health check failed: ' + EH.esc(e.message) + "</div>";
    }
  };

  // ------------------------------------------------------------------ job detail (live)

  EH.watchJob = function (config) {
    const root = document.getElementById("job-live");
    const state = { lastEventId: 0, stopped: false, lossPoints: [], chart: null };
    const el = (id) => document.getElementById(id);
    document.querySelectorAll("#event-rows [data-event-id]").forEach(function (tr) {
      state.lastEventId = Math.max(state.lastEventId, Number(tr.dataset.eventId));
    });

    function render(job) {
      EH.setBar(el("job-progress"), job.percent, job.status);
      el("job-percent").textContent = job.percent == null ? "—" : job.percent.toFixed(1) + "%";
      el("job-status").className = "badge " + job.status;
      el("job-status").textContent = job.status;
      el("job-done").textContent =
        job.progress_done.toLocaleString() +
        (job.progress_total ? " / " + job.progress_total.toLocaleString() : "") + " " + job.progress_unit;
      el("job-rate").textContent = job.rate == null ? "—" : EH.rate(job.rate) + " " + job.progress_unit + "/s";
      el("job-eta").textContent = job.status === "running" ? EH.duration(job.eta_seconds) : "—";
      const active = job.status === "queued" || job.status === "running";
      el("job-note").textContent = active ? job.waiting_reason || job.progress_note || "" : "";
      if (job.started_at && job.finished_at) {
        el("job-took").textContent = EH.duration((new Date(job.finished_at) - new Date(job.started_at)) / 1000);
      }
      el("job-attempts").textContent = job.attempts;
      el("job-worker").textContent = job.worker || "—";
      const errorBox = el("job-error");
      if (job.error) {
        errorBox.hidden = false;
        el("job-error-text").textContent = job.error;
      } else {
        errorBox.hidden = true;
      }
      const running = job.status === "queued" || job.status === "running";
      el("btn-cancel").hidden = !running || job.cancel_requested;
      el("btn-retry").hidden = !(job.status === "failed" || job.status === "cancelled");
      el("cancel-pending").hidden = !(running && job.cancel_requested);
      if (job.status === "succeeded" && job.result && Object.keys(job.result).length) {
        el("job-result").hidden = false;
        el("job-result-text").textContent = JSON.stringify(job.result, null, 2);
      }
      renderShards(job.shards || []);
      root.dataset.status = job.status;
      root.dataset.polls = Number(root.dataset.polls || 0) + 1;
      if (config.kind === "finetune") updateLoss(job);
    }

    function renderShards(shards) {
      if (!shards.length) return;
      el("shards-card").hidden = false;
      el("shard-rows").innerHTML = shards.map(function (s) {
        const done = s.progress_done.toLocaleString() + (s.progress_total ? " / " + s.progress_total.toLocaleString() : "");
        return "<tr data-shard-id='" + s.id + "'><td><a href='/jobs/" + s.id + "/'>#" + s.id + "</a></td>" +
          "<td><span class='badge " + EH.esc(s.status) + "'>" + EH.esc(s.status) + "</span></td>" +
          "<td>" + done + "</td><td>" + s.attempts + "</td><td class='mono small'>" + EH.esc(s.worker || "—") + "</td></tr>";
      }).join("");
    }

    function renderEvents(events) {
      const body = el("event-rows");
      events.forEach(function (ev) {
        if (ev.id <= state.lastEventId) return;
        state.lastEventId = ev.id;
        const empty = el("events-empty");
        if (empty) empty.remove();
        const tr = document.createElement("tr");
        tr.dataset.eventId = ev.id;
        tr.innerHTML = "<td class='nowrap muted'>" + EH.esc(EH.time(ev.created_at)) + "</td>" +
          "<td><span class='badge " + EH.esc(ev.kind) + "'>" + EH.esc(ev.kind) + "</span></td>" +
          "<td>" + EH.esc(ev.message) + "</td>";
        body.appendChild(tr);
      });
    }

    // Finetune progress notes carry "loss=<x>" while training; the final curve is in the result.
    function updateLoss(job) {
      let points = null;
      const curve = config.lossCurve && config.lossCurve.length ? config.lossCurve : null;
      if (Array.isArray(curve) && curve.length) {
        points = curve.map((p, i) => (typeof p === "number" ? { x: i + 1, y: p } : { x: p.step || i + 1, y: p.loss }));
      } else {
        const m = /loss[=:\s]+([0-9.eE+-]+)/.exec(job.progress_note || "");
        if (m) {
          const y = parseFloat(m[1]);
          const last = state.lossPoints[state.lossPoints.length - 1];
          if (!last || last.x !== job.progress_done) state.lossPoints.push({ x: job.progress_done, y: y });
        }
        points = state.lossPoints;
      }
      if (!points.length || !window.Chart) return;
      el("loss-card").hidden = false;
      if (!state.chart) {
        state.chart = EH.lineChart(el("loss-chart"), [{ label: "training loss", data: points }], "step", "loss");
      } else {
        state.chart.data.datasets[0].data = points;
        state.chart.update("none");
      }
    }

    async function tick() {
      try {
        const job = await EH.api(config.jobUrl);
        render(job);
        const events = await EH.api(config.eventsUrl + "?page_size=500");
        renderEvents(events.results || events);
        if (["succeeded", "failed", "cancelled"].includes(job.status)) {
          // Finished while watched: one reload brings what the server renders for finished
          // jobs (links to what the job made, a fine-tune's stored loss curve).
          if (state.sawActive) {
            window.location.reload();
            return;
          }
          if (!state.stopped) {
            state.stopped = true;
            // One slower follow-up catches a retry started from another tab.
            setTimeout(tick, 5000);
          }
          return;
        }
        state.stopped = false;
        state.sawActive = true;
      } catch (e) {
        el("poll-error").hidden = false;
        el("poll-error").textContent = "Live update failed (" + e.message + "); retrying.";
        setTimeout(tick, 3000);
        return;
      }
      el("poll-error").hidden = true;
      setTimeout(tick, config.interval || 1000);
    }
    tick();
  };

  // ------------------------------------------------------------------ corpus upload

  // Error details from the API: a refused body's {field, fields: {path: [messages]}}, a
  // file's bad lines [{line, message}], or a list of strings.
  EH.detailsList = function (details) {
    const items = [];
    if (!details) return items;
    if (details.fields && typeof details.fields === "object" && !Array.isArray(details.fields)) {
      Object.entries(details.fields).forEach(([path, messages]) =>
        [].concat(messages).forEach((m) => items.push(path + ": " + m)));
      return items;
    }
    const push = (d) => {
      if (d == null) return;
      if (typeof d === "string") items.push(d);
      else if (d.line != null) {
        items.push((d.file ? d.file + " " : "") + "line " + d.line + ": " + (d.field ? d.field + ": " : "") +
          (d.problem || d.message || d.error || ""));
      }
      else if (d.message) items.push(d.message);
      else items.push(JSON.stringify(d));
    };
    if (Array.isArray(details)) details.forEach(push);
    else if (typeof details === "object") {
      Object.entries(details).forEach(([key, value]) => {
        if (Array.isArray(value) && value.length && typeof value[0] === "object") value.forEach(push);
        else if (Array.isArray(value)) value.forEach((v) => items.push(key + ": " + v));
        else if (typeof value === "object") push(value);
        else items.push(key + ": " + value);
      });
    }
    return items;
  };

  EH.showErrors = function (box, message, details) {
    const items = EH.detailsList(details);
    box.hidden = false;
    box.innerHTML = "<strong>" + EH.esc(message) + "</strong>" +
      (items.length ? "<ul>" + items.slice(0, 50).map((i) => "<li>" + EH.esc(i) + "</li>").join("") + "</ul>" +
        (items.length > 50 ? "<p class='small'>… and " + (items.length - 50) + " more</p>" : "") : "");
  };

  EH.uploadPage = function (config) {
    const form = document.getElementById("upload-form");
    const input = document.getElementById("up-file");
    const zone = document.getElementById("dropzone");
    const fileName = document.getElementById("file-name");
    const errors = document.getElementById("upload-errors");
    const button = document.getElementById("upload-button");
    let file = null;

    function choose(f) {
      file = f || null;
      fileName.textContent = file ? file.name + " · " + (file.size / 1024).toFixed(1) + " KiB" : "";
      const nameInput = document.getElementById("up-name");
      if (file) nameInput.placeholder = file.name.replace(/(\.(jsonl|json|ndjson|csv|tsv|zip|gz))+$/i, "");
    }
    zone.addEventListener("click", () => input.click());
    zone.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); input.click(); } });
    input.addEventListener("change", () => choose(input.files[0]));
    ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (ev) => { ev.preventDefault(); zone.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (ev) => { ev.preventDefault(); zone.classList.remove("over"); }));
    zone.addEventListener("drop", (ev) => { if (ev.dataTransfer.files.length) choose(ev.dataTransfer.files[0]); });

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      errors.hidden = true;
      errors.className = "alert error";
      if (!file) {
        EH.showErrors(errors, "Choose a file to upload first.");
        return;
      }
      const data = new FormData();
      data.append("file", file, file.name);
      const nameInput = document.getElementById("up-name");
      const name = nameInput.value.trim() || nameInput.placeholder.trim();
      if (name) data.append("name", name);
      const fmt = document.getElementById("up-format").value;
      if (fmt) data.append("format", fmt);
      if (document.getElementById("up-skip").checked) data.append("skip_invalid", "true");

      const status = document.getElementById("upload-status");
      const bar = document.getElementById("upload-progress");
      status.hidden = false;
      document.getElementById("ingest-status").hidden = true;
      button.disabled = true;
      EH.setBar(bar, 0, "running");

      // XHR, not fetch: only XHR reports upload progress events.
      const xhr = new XMLHttpRequest();
      xhr.open("POST", config.uploadUrl);
      xhr.setRequestHeader("X-CSRFToken", EH.csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        const pct = (100 * e.loaded) / e.total;
        EH.setBar(bar, pct, "running");
        document.getElementById("upload-percent").textContent = pct.toFixed(0) + "%";
        document.getElementById("upload-bytes").textContent =
          (e.loaded / 1024).toFixed(1) + " / " + (e.total / 1024).toFixed(1) + " KiB sent";
      });
      xhr.addEventListener("load", function () {
        button.disabled = false;
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (xhr.status < 200 || xhr.status >= 300) {
          EH.setBar(bar, 100, "failed");
          const message = xhr.status === 413 ? "The file is larger than the upload limit." : EH.errorMessage(body, xhr);
          EH.showErrors(errors, "Upload rejected: " + message, body && body.error && body.error.details);
          return;
        }
        EH.setBar(bar, 100, "succeeded");
        document.getElementById("upload-percent").textContent = "100%";
        const job = (body && (body.job || (body.kind ? body : null))) || null;
        const jobId = job ? job.id : body && body.job_id;
        if (jobId) EH.followIngest(config, jobId, body);
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        EH.setBar(bar, 100, "failed");
        EH.showErrors(errors, "The upload did not reach the server (network error); try again.");
      });
      xhr.send(data);
    });
  };

  EH.followIngest = function (config, jobId, uploadBody) {
    const box = document.getElementById("ingest-status");
    const bar = document.getElementById("ingest-progress");
    const note = document.getElementById("ingest-note");
    const done = document.getElementById("ingest-done");
    const errors = document.getElementById("upload-errors");
    const link = document.getElementById("ingest-job-link");
    box.hidden = false;
    done.hidden = true;
    link.href = config.jobPage + jobId + "/";
    link.textContent = "job #" + jobId;
    const corpusId = uploadBody && (uploadBody.corpus && (uploadBody.corpus.id || uploadBody.corpus));
    async function poll() {
      let job;
      try {
        job = await EH.api(config.jobApi + jobId + "/");
      } catch (e) {
        note.textContent = "Could not read the job (" + e.message + "); retrying.";
        setTimeout(poll, 2000);
        return;
      }
      EH.setBar(bar, job.percent, job.status);
      note.textContent = job.status + (job.progress_note ? " · " + job.progress_note : "") +
        (job.percent != null ? " · " + job.percent.toFixed(0) + "%" : "");
      if (job.status === "succeeded") {
        const r = job.result || {};
        const cid = corpusId || job.corpus;
        const parts = [];
        [["documents", "documents"], ["inserted", "new"], ["updated", "changed"], ["unchanged", "unchanged"]].forEach(([k, label]) => {
          if (typeof r[k] === "number") parts.push(r[k] + " " + label);
        });
        (r.query_sets || []).forEach((q) => {
          parts.push("query set “" + (q.name || "?") + "”" + (q.queries != null ? " with " + q.queries + " queries" : "") +
            (q.qrels != null ? " and " + q.qrels + " judgements" : ""));
        });
        done.hidden = false;
        done.innerHTML = "<strong>Ingest finished.</strong> " + EH.esc(parts.join(", ")) + "." +
          (cid ? ' <a class="btn small primary" id="open-corpus" href="' + config.corpusPage + cid + '/">Open the corpus</a>' : "");
        if (r.skipped_total) {
          EH.showErrors(errors, r.skipped_total + " invalid line(s) were skipped:", r.skipped);
          errors.className = "alert info";
        }
        return;
      }
      if (job.status === "failed" || job.status === "cancelled") {
        errors.className = "alert error";
        EH.showErrors(errors, "Ingest " + job.status + ": " + (job.error || "no reason given").split("\n\n")[0]);
        return;
      }
      setTimeout(poll, 700);
    }
    poll();
  };

  // ------------------------------------------------------------------ search playground

  EH.searchPage = function (config) {
    const form = document.getElementById("search-form");
    const list = document.getElementById("search-results");
    const meta = document.getElementById("search-meta");
    const error = document.getElementById("search-error");
    const empty = document.getElementById("search-empty");
    const button = document.getElementById("search-button");
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const [what, id] = document.getElementById("s-target").value.split(":");
      const body = {
        query: document.getElementById("s-query").value,
        k: parseInt(document.getElementById("s-k").value || "10", 10),
        exact: document.getElementById("s-exact").checked,
      };
      // Left out, a corpus's search follows its serving policy.
      const compensation = document.getElementById("s-comp").value;
      if (compensation) body.compensation = compensation;
      body[what] = parseInt(id, 10);
      const version = document.getElementById("s-version").value;
      if (version) body.model_version = parseInt(version, 10);
      error.hidden = true;
      button.disabled = true;
      const started = performance.now();
      try {
        const res = await EH.api(config.searchUrl, { method: "POST", json: body });
        const ms = performance.now() - started;
        list.innerHTML = "";
        empty.hidden = res.results.length > 0;
        if (!res.results.length) empty.innerHTML = "<strong>No results</strong>The index is empty.";
        res.results.forEach(function (hit, i) {
          const li = document.createElement("li");
          li.className = "search-hit";
          li.innerHTML = "<span class='rank'>" + (i + 1) + "</span>" +
            "<span class='score'>" + hit.score.toFixed(4) + "</span>" +
            "<span><span class='title'>" + EH.esc(hit.title || "(untitled)") + "</span><br>" +
            "<code class='muted'>" + EH.esc(hit.external_id) + "</code></span>";
          list.appendChild(li);
        });
        // What answered, as the server resolved it: the policy, or what the form overrode.
        const encoder = (config.versionLabels || {})[res.model_version] || "version #" + res.model_version;
        const policy = res.policy ? " · serving policy" :
          res.note ? " · serving policy not followed: " + res.note : "";
        meta.textContent = "index #" + res.index + " · queries by " + encoder +
          " · compensation " + res.compensation + policy +
          (res.exact ? " · exact" : " · HNSW") + " · " + Math.round(ms) + " ms";
      } catch (e) {
        EH.showErrors(error, e.message, e.body && e.body.error && e.body.error.details);
      } finally {
        button.disabled = false;
      }
    });
  };

  // ------------------------------------------------------------------ audit detail

  // results: {gaslite|message_only|centroid: {"appeared@k": share, ...}, non_concept: {...},
  // held_in: {...}} as audits.services.audit_evaluate writes them.
  const AUDIT_SERIES = [
    ["gaslite", "GASLITE passages", {}],
    ["message_only", "message only", { borderDash: [6, 4] }],
    ["centroid", "centroid vector", { borderDash: [2, 3] }],
    ["non_concept", "GASLITE on non-concept queries", { borderDash: [10, 4], pointStyle: "rectRot" }],
  ];

  EH.appearedCurve = function (obj) {
    if (!obj || typeof obj !== "object") return [];
    return Object.keys(obj).filter((k) => /^appeared@\d+$/.test(k))
      .map((k) => ({ x: parseInt(k.split("@")[1], 10), y: obj[k] }))
      .sort((a, b) => a.x - b.x);
  };

  EH.auditPage = function (config) {
    const results = config.results || {};
    const series = AUDIT_SERIES
      .map(([key, label, style]) => Object.assign({ label: label, data: EH.appearedCurve(results[key]) }, style))
      .filter((s) => s.data.length);
    if (series.length) {
      EH.lineChart(document.getElementById("chart-appeared"), series, "k", "appeared@k", {
        scales: {
          x: {
            type: "logarithmic",
            title: { display: true, text: "k (log scale)" },
            ticks: { autoSkip: false, callback: (v) => ([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000].includes(v) ? v : "") },
          },
          y: { min: 0, max: 1, title: { display: true, text: "share of held-out queries" } },
        },
      });
    } else {
      document.getElementById("chart-appeared").parentElement.hidden = true;
      document.getElementById("appeared-empty").hidden = false;
    }
    const curves = (config.objectiveCurves || [])
      .map((c, i) => ({ label: "passage " + (i + 1), pointRadius: 0, data: c.map((y, j) => ({ x: j + 1, y: y })) }))
      .filter((c) => c.data.length);
    if (curves.length) {
      EH.lineChart(document.getElementById("chart-objective"), curves, "iteration", "cosine to target");
    } else {
      document.getElementById("chart-objective").parentElement.hidden = true;
      document.getElementById("objective-empty").hidden = false;
    }
  };

  // ------------------------------------------------------------------ charts

  const PALETTE = ["#3b5bdb", "#e8590c", "#2b8a3e", "#c2255c", "#5f3dc4", "#0b7285", "#a61e4d", "#5c940d"];
  EH.color = (i) => PALETTE[i % PALETTE.length];

  EH.lineChart = function (canvas, datasets, xLabel, yLabel, extra) {
    return new window.Chart(canvas, {
      type: "line",
      data: {
        datasets: datasets.map((d, i) => Object.assign({
          borderColor: EH.color(i), backgroundColor: EH.color(i), pointRadius: 2, borderWidth: 2, tension: 0.15,
        }, d)),
      },
      options: Object.assign({
        animation: false,
        maintainAspectRatio: false,
        parsing: { xAxisKey: "x", yAxisKey: "y" },
        scales: {
          x: { type: "linear", ticks: { precision: 0 }, title: { display: true, text: xLabel } },
          y: { title: { display: true, text: yLabel } },
        },
        plugins: { legend: { position: "bottom", labels: { usePointStyle: true } } },
      }, extra || {}),
    });
  };

  EH.barChart = function (canvas, labels, datasets, yLabel) {
    return new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: labels,
        datasets: datasets.map((d, i) => Object.assign({ backgroundColor: EH.color(i), borderRadius: 3, maxBarThickness: 56 }, d)),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, suggestedMax: 1, title: { display: true, text: yLabel } } },
        plugins: { legend: { position: "bottom" } },
      },
    });
  };
})();
