// The cluster pages: everything comes from the service's REST API (same origin). Cookie-authenticated
// requests carry the page's XSRF token in X-XSRFToken; the API refuses them without it.
"use strict";

(function () {
  const root = document.getElementById("cmsaf");
  if (!root) return;
  const API = root.dataset.api;
  const PREFIX = root.dataset.prefix;
  const XSRF = (window.jhdata && window.jhdata.xsrf_token) || "";
  const ACTIVE = ["pending", "starting", "running", "stopping"];
  const TRANSITIONAL = ["pending", "starting", "stopping"];
  const BADGES = {
    pending: "text-bg-secondary", starting: "text-bg-info", running: "text-bg-success",
    stopping: "text-bg-warning", stopped: "text-bg-light", failed: "text-bg-danger",
  };

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { "X-XSRFToken": XSRF, Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const message = (data && data.error) || `${response.status} ${response.statusText}`;
      throw new APIError(response.status, message);
    }
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function showAlert(message) {
    const box = document.getElementById("cmsaf-alert");
    box.textContent = message || "";
    box.classList.toggle("d-none", !message);
  }

  function announce(message) {
    document.getElementById("cmsaf-status").textContent = message;
  }

  function age(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
    return `${Math.floor(seconds / 86400)} d`;
  }

  function statusBadge(cluster) {
    return el("span", { class: `badge cmsaf-status ${BADGES[cluster.status] || ""}`, "data-status": cluster.status },
      cluster.status);
  }

  // requested / queued / held / running, as a stacked bar with the numbers in words
  function workersView(cluster) {
    const w = cluster.workers;
    const total = Math.max(w.requested, w.running + w.pending + w.held, 1);
    const part = (n, cls, label) => n > 0
      ? el("div", { class: `progress-bar ${cls}`, style: `width: ${(100 * n) / total}%`, title: `${n} ${label}` })
      : null;
    const bar = el("div", {
      class: "progress-stacked cmsaf-workers-bar", role: "img",
      "aria-label": `${w.running} of ${w.requested} workers running`,
    },
    el("div", { class: "progress", style: `width: 100%` },
      part(w.running, "bg-success", "running"), part(w.pending, "bg-info", "queued"),
      part(w.held, "bg-warning", "held")));
    const words = `${w.running} / ${w.requested} running · ${w.pending} queued · ${w.held} held`
      + (w.failed ? ` · ${w.failed} failed` : "");
    const reasons = (w.held_reasons || []).length
      ? el("ul", { class: "cmsaf-held small mb-0" }, w.held_reasons.map((r) => el("li", {}, `held: ${r}`)))
      : null;
    const text = el("span", { class: "cmsaf-workers-text small" }, words);
    return el("div", { class: "cmsaf-workers" }, bar, text, reasons);
  }

  // why a cluster ended: in red when it failed, muted when it was stopped
  function reasonView(cluster) {
    if (!cluster.reason) return null;
    const tone = cluster.status === "failed" ? "text-danger" : "text-body-secondary";
    return el("div", { class: `small cmsaf-reason ${tone}` }, cluster.reason);
  }

  function busy(cluster) {
    const w = cluster.workers;
    return TRANSITIONAL.includes(cluster.status)
      || (cluster.status === "running" && (w.pending > 0 || w.held > 0 || w.running !== w.requested));
  }

  // -- the stop confirmation (a modal <dialog>: focus trapped, Escape cancels) -------------------------

  function confirmStop(clusterId) {
    const dialog = document.getElementById("confirm-stop");
    document.getElementById("confirm-stop-id").textContent = clusterId;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "stop"), { once: true });
      dialog.showModal();
    });
  }

  async function stopCluster(clusterId) {
    if (!(await confirmStop(clusterId))) return false;
    await api("DELETE", `clusters/${clusterId}`);
    announce(`Stopping cluster ${clusterId}`);
    return true;
  }

  // -- lists: my clusters, and every user's for admins -------------------------------------------------

  function clusterRow(cluster, admin, refresh) {
    const links = el("span", { class: "cmsaf-links" },
      cluster.status === "running" ? el("a", { href: cluster.dashboard_link }, "Dashboard") : null,
      cluster.status === "running" ? " · " : null,
      el("a", { href: `${PREFIX}clusters/${cluster.id}/logs` }, "Logs"));
    const action = admin && ACTIVE.includes(cluster.status)
      ? el("button", {
        class: "btn btn-sm btn-outline-danger",
        type: "button",
        "aria-label": `Stop cluster ${cluster.id} of ${cluster.owner}`,
        onclick: async () => {
          try {
            if (await stopCluster(cluster.id)) refresh();
          } catch (e) {
            showAlert(e.message);
          }
        },
      }, "Stop…")
      : null;
    return el("tr", { "data-cluster": cluster.id, "data-status": cluster.status },
      el("td", {}, el("a", { href: `${PREFIX}clusters/${cluster.id}` }, el("code", {}, cluster.id.slice(0, 12)))),
      admin ? el("td", {}, cluster.owner) : null,
      el("td", {}, statusBadge(cluster), reasonView(cluster)),
      el("td", {}, age(cluster.created)),
      el("td", {}, workersView(cluster)),
      el("td", {}, links),
      admin ? el("td", {}, action) : null);
  }

  function listPage(admin) {
    const body = document.getElementById("clusters-body");
    const empty = document.getElementById("clusters-empty");
    const showEnded = document.getElementById("show-ended");
    const filterText = document.getElementById("filter-text");
    const filterStatus = document.getElementById("filter-status");
    let clusters = [];
    let timer = null;

    function visible(cluster) {
      if (admin) {
        const text = filterText.value.trim().toLowerCase();
        const status = filterStatus.value;
        if (text && !cluster.owner.toLowerCase().includes(text) && !cluster.id.includes(text)) return false;
        if (status === "active") return ACTIVE.includes(cluster.status);
        return !status || cluster.status === status;
      }
      return showEnded.checked || ACTIVE.includes(cluster.status);
    }

    function render() {
      const shown = clusters.filter(visible).reverse();
      body.replaceChildren(...shown.map((c) => clusterRow(c, admin, refresh)));
      empty.classList.toggle("d-none", shown.length > 0);
    }

    async function refresh() {
      clearTimeout(timer);
      try {
        clusters = await api("GET", admin ? "clusters?all=true" : "clusters");
        showAlert("");
        render();
      } catch (e) {
        showAlert(e.message);
      }
      // quick while something moves, slow otherwise
      timer = setTimeout(refresh, clusters.some(busy) ? 1000 : 10000);
    }

    for (const control of [showEnded, filterText, filterStatus]) {
      if (control) control.addEventListener("input", render);
    }
    const filter = document.getElementById("admin-filter");
    if (filter) filter.addEventListener("submit", (event) => event.preventDefault());
    refresh();
  }

  // -- create ------------------------------------------------------------------------------------------

  function readOption(control) {
    if (control.tagName === "SELECT") return JSON.parse(control.value);
    const raw = control.value.trim();
    if (raw === "") return undefined; // the service's default
    if (control.dataset.kind === "integer") return /^-?\d+$/.test(raw) ? Number(raw) : raw;
    if (control.dataset.kind === "number") return Number.isFinite(Number(raw)) ? Number(raw) : raw;
    return raw;
  }

  function createPage() {
    const form = document.getElementById("create-form");
    const button = document.getElementById("create-button");
    const controls = Array.from(form.querySelectorAll("[data-kind]"));

    function fieldError(name, message) {
      for (const control of controls) {
        const mine = control.name === name;
        control.classList.toggle("is-invalid", mine);
        control.setAttribute("aria-invalid", mine ? "true" : "false");
        document.getElementById(`error-${control.name}`).textContent = mine ? message : "";
        if (mine) control.focus();
      }
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      fieldError(null, "");
      showAlert("");
      const options = {};
      for (const control of controls) {
        const value = readOption(control);
        if (value !== undefined) options[control.name] = value;
      }
      button.disabled = true;
      try {
        const cluster = await api("POST", "clusters", { options });
        window.location.assign(`${PREFIX}clusters/${cluster.id}`);
      } catch (e) {
        // the API names the option in its message: "option 'cores' must be at most 8"
        const match = /option '([^']+)'/.exec(e.message);
        if (e.status === 422 && match && controls.some((c) => c.name === match[1])) fieldError(match[1], e.message);
        else showAlert(e.message);
        button.disabled = false;
      }
    });
  }

  // -- one cluster: live status, scale, adapt, stop ----------------------------------------------------

  function clusterPage(clusterId) {
    const status = document.getElementById("cluster-status");
    const message = document.getElementById("action-message");
    const scaleInput = document.getElementById("scale-workers");
    const adaptMin = document.getElementById("adapt-minimum");
    const adaptMax = document.getElementById("adapt-maximum");
    let cluster = null;
    let generation = 0;
    let timer = null;

    function render() {
      status.replaceChildren(statusBadge(cluster));
      document.getElementById("cluster-reason").textContent = cluster.reason || "";
      document.getElementById("cluster-age").textContent = age(cluster.created);
      document.getElementById("cluster-options").textContent = Object.entries(cluster.options)
        .filter(([, v]) => v !== null).map(([k, v]) => `${k}: ${v}`).join(", ");
      document.getElementById("cluster-workers").replaceChildren(workersView(cluster));
      document.getElementById("cluster-adapt").textContent = cluster.adapt
        ? `between ${cluster.adapt.minimum} and ${cluster.adapt.maximum} workers` : "no";
      document.getElementById("dashboard-link").href = cluster.dashboard_link || "#";
      document.getElementById("dashboard-item").classList.toggle("d-none", cluster.status !== "running");
      const changeable = ACTIVE.includes(cluster.status) && cluster.status !== "stopping";
      for (const control of document.querySelectorAll("#cluster-actions button, #cluster-actions input")) {
        control.disabled = !changeable;
      }
      if (scaleInput.value === "") scaleInput.value = cluster.workers.requested;
      if (adaptMax.value === "") adaptMax.value = Math.max(cluster.workers.requested, 1);
    }

    async function poll() {
      clearTimeout(timer);
      const mine = ++generation;
      let next = 5000;
      try {
        // a status change answers the long poll at once; worker counts are short-polled while they move
        const path = cluster && TRANSITIONAL.includes(cluster.status)
          ? `clusters/${clusterId}?wait=30&status=${cluster.status}` : `clusters/${clusterId}`;
        const model = await api("GET", path);
        if (mine !== generation) return;
        const before = cluster && cluster.status;
        cluster = model;
        render();
        if (before && before !== cluster.status) announce(`Cluster is ${cluster.status}`);
        next = TRANSITIONAL.includes(cluster.status) ? 0 : busy(cluster) ? 1000 : 5000;
        showAlert("");
      } catch (e) {
        if (mine !== generation) return;
        showAlert(e.message);
      }
      if (cluster && !ACTIVE.includes(cluster.status)) return; // ended: nothing changes any more
      timer = setTimeout(poll, next);
    }

    async function act(path, body, done) {
      message.textContent = "";
      try {
        const model = await api("POST", path, body);
        message.textContent = model.clamped ? `${done}; ${model.clamped}` : done;
        poll();
      } catch (e) {
        message.textContent = e.message;
      }
    }

    // a whole number of workers from an input, or null (and a message) when it is not one
    function workers(input, what) {
      const raw = input.value.trim();
      if (/^\d+$/.test(raw)) return Number(raw);
      message.textContent = `${what}: enter a whole number of workers`;
      input.focus();
      return null;
    }

    document.getElementById("scale-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const n = workers(scaleInput, "Number of workers");
      if (n !== null) act(`clusters/${clusterId}/scale`, { workers: n }, `Scaling to ${n} workers`);
    });
    document.getElementById("adapt-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const minimum = workers(adaptMin, "Minimum");
      const maximum = minimum === null ? null : workers(adaptMax, "Maximum");
      if (maximum === null) return;
      act(`clusters/${clusterId}/adapt`, { minimum, maximum }, `Adapting between ${minimum} and ${maximum} workers`);
    });
    document.getElementById("stop-button").addEventListener("click", async () => {
      try {
        if (await stopCluster(clusterId)) {
          message.textContent = "Stopping the cluster";
          poll();
        }
      } catch (e) {
        message.textContent = e.message;
      }
    });
    poll();
  }

  // -- logs --------------------------------------------------------------------------------------------

  function logsPage(clusterId) {
    const body = document.getElementById("logs-body");
    async function load() {
      try {
        const logs = await api("GET", `clusters/${clusterId}/logs`);
        // the scheduler first, then the workers by name
        const names = Object.keys(logs).sort((a, b) => (b === "scheduler") - (a === "scheduler") || a.localeCompare(b));
        const block = (name) => el("details", { class: "cmsaf-log", open: true },
          el("summary", {}, name),
          el("pre", { tabindex: "0", "aria-label": `log of ${name}` }, logs[name] || "(empty)"));
        body.replaceChildren(...(names.length ? names.map(block) : [el("p", {}, "No logs yet.")]));
        showAlert("");
      } catch (e) {
        showAlert(e.message);
      }
    }
    document.getElementById("logs-refresh").addEventListener("click", load);
    load();
  }

  const page = root.dataset.page;
  if (page === "clusters") listPage(false);
  else if (page === "admin") listPage(true);
  else if (page === "create") createPage();
  else if (page === "cluster") clusterPage(root.dataset.cluster);
  else if (page === "logs") logsPage(root.dataset.cluster);
})();
