// Enclii dashboard: a single page over the /v1 API. No build step, no framework: the API is the
// product, and this page only reads it and calls its actions (which the API authorises and audits).
//
// The token lives in sessionStorage (gone with the tab) and travels only as an Authorization
// header — never in a URL. Live views read Server-Sent Events through fetch() for that reason
// (EventSource cannot send headers).

const TOKEN_KEY = "enclii.token";
const view = document.getElementById("view");
let token = sessionStorage.getItem(TOKEN_KEY);
let me = null;
// The current view's scope: aborting it ends every stream the view opened. Each render makes a
// new one, so a slow view that resolves after the user moved on cannot leave a stream running.
let scope = new AbortController();
/** Most lines a log pane keeps: a page left open on a busy service must not grow forever. */
const MAX_LOG_LINES = 2000;

// --- small helpers ------------------------------------------------------------------------------

/** Creates an element: h("td", {class: "num"}, "3"). Text is always set as text, never as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const badge = (state) => h("span", { class: `badge s-${state}`, "data-state": state }, state);
/** A release's status, with why it waits when no worker can run its next step (the API's `waiting`). */
const releaseStatus = (r) => [badge(r.status), r.waiting ? h("div", { class: "waiting" }, r.waiting) : null];
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "—");
const whenIso = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const secs = (s) => (s === null || s === undefined ? "—" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`);
const enc = encodeURIComponent;

/** `url` if it is an http(s) URL, else null: data never becomes a `javascript:` or `data:` link. */
function safeUrl(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/** A link to an external URL from data (opened in a new tab), or the URL as text if not http(s). */
function externalLink(url) {
  if (!url) return "—";
  const href = safeUrl(url);
  return href ? h("a", { href, target: "_blank", rel: "noopener noreferrer" }, url) : h("span", { class: "mono" }, url);
}

/** Appends a line to a log pane, dropping the oldest beyond MAX_LOG_LINES; follows the tail only
 * if the reader was already at the bottom (scrolling up to read stays put). */
function appendLog(pane, line) {
  const atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 24;
  pane.append(document.createTextNode(`${line}\n`));
  let extra = pane.childNodes.length - MAX_LOG_LINES;
  if (extra > 0) {
    while (extra-- > 0) pane.firstChild.remove();
    if (!pane.dataset.trimmed) {
      pane.dataset.trimmed = "true";
      pane.title = `Only the last ${MAX_LOG_LINES} lines are kept.`;
    }
  }
  if (atBottom) pane.scrollTop = pane.scrollHeight;
}

/** The API's reason for an error, with its hint (what to do about it). */
function reason(e) {
  return `${e.message}${e.hint ? ` — ${e.hint}` : ""}`;
}

function flash(message, kind = "info") {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = kind;
  // Errors are announced at once and stay longer: they are what the user must read.
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => (el.hidden = true), kind === "error" ? 20000 : 6000);
}

class ApiProblem extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.hint = problem.hint;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiProblem(0, { detail: "the server cannot be reached", hint: "check that `enclii server` runs and the network is up, then try again" });
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({}));
  // A session whose token stops working (expired, revoked) goes back to the sign-in form.
  if (res.status === 401 && me) signOut("Your token was refused (expired or revoked): sign in again.");
  if (!res.ok) throw new ApiProblem(res.status, data);
  return data;
}
const get = (path) => api("GET", path);

/** An action button: calls the API, reports the outcome, then `after()`. */
function action(label, confirmText, call, after, cls) {
  const button = h("button", { class: cls }, label);
  button.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    button.disabled = true;
    try {
      await call();
      flash(`${label}: done`);
      if (after) await after();
    } catch (e) {
      // A refused token already went back to sign-in, with its own message.
      if (e.status === 401) return;
      // A role or scope that does not allow it: say so plainly (the API's reason names what is missing).
      const what = e.status === 403 ? "refused" : "failed";
      flash(`${label} ${what}: ${reason(e)}`, "error");
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/** Reconnection delays: doubling from 1 s to 30 s, with jitter so that many tabs do not return at once. */
const backoff = (attempt) => Math.min(30000, 1000 * 2 ** attempt) * (0.75 + Math.random() * 0.5);

/**
 * Reads a Server-Sent Events response with the bearer token and calls onEvent(name, data) for
 * each event; reconnects after a drop (backing off while it keeps failing) unless the view moved
 * on, the API refused (401/403/404), or `once` is set and the stream ended.
 */
function stream(path, onEvent, { once = false, status, within = scope } = {}) {
  const controller = new AbortController();
  // The view's scope ends it too — at once if that view was already left.
  if (within.signal.aborted) controller.abort();
  else within.signal.addEventListener("abort", () => controller.abort(), { once: true });
  const setStatus = (text, live) => {
    if (!status) return;
    status.textContent = text;
    status.className = live === "done" ? "live done" : live ? "live" : "live off";
  };
  (async () => {
    let failures = 0;
    while (!controller.signal.aborted) {
      try {
        const res = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, signal: controller.signal });
        if (!res.ok) throw new ApiProblem(res.status, await res.json().catch(() => ({})));
        setStatus("● live", true);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const raw = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let name = "message";
            const data = [];
            for (const line of raw.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            }
            if (data.length) {
              // A connection that delivered an event is healthy: the next drop retries quickly.
              failures = 0;
              onEvent(name, data.join("\n"));
            }
          }
        }
        if (once) {
          setStatus("finished", "done");
          return;
        }
      } catch (e) {
        if (controller.signal.aborted) return;
        if (e.status === 401 && me) {
          signOut("Your token was refused (expired or revoked): sign in again.");
          return;
        }
        if (e.status === 401 || e.status === 403 || e.status === 404) {
          setStatus("○ stopped", false);
          flash(`Live view stopped: ${reason(e)}`, "error");
          return;
        }
      }
      const delay = backoff(failures++);
      setStatus(`○ reconnecting in ${Math.round(delay / 1000)} s…`, false);
      await new Promise((r) => setTimeout(r, delay));
    }
  })();
  return controller;
}

function table(headers, rows, empty = "Nothing yet.") {
  if (!rows.length) return h("p", { class: "muted empty" }, empty);
  // A column without a title (an action's) still has a name for screen readers.
  const th = (x) => (x ? h("th", { scope: "col", class: x.endsWith("#") ? "num" : undefined }, x.replace(/#$/, "")) : h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Action")));
  // Wide tables scroll inside their box instead of pushing the page sideways.
  return h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, headers.map(th))), h("tbody", {}, rows)));
}

// --- sign-in ------------------------------------------------------------------------------------

/** Set while a message must outlive the navigation that follows it (the sign-out reason). */
let keepFlash = false;

function signOut(message) {
  keepFlash = Boolean(message);
  token = null;
  me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  scope.abort();
  view.replaceChildren();
  if (message) flash(message, "error");
  location.hash = "#/signin";
  render();
}

function signInView() {
  const input = h("input", { id: "token", type: "password", autocomplete: "off", placeholder: "enclii_pat_…", required: true });
  const error = h("p", { class: "error-text", id: "signin-error", role: "alert" });
  const form = h(
    "form",
    { class: "card signin" },
    h("h1", {}, "Sign in"),
    h("label", { for: "token" }, "API token (a personal access token; `enclii auth token create`, or the bootstrap token the server printed)"),
    input,
    h("div", { class: "row" }, h("button", { class: "primary", type: "submit" }, "Sign in")),
    error,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    token = input.value.trim();
    try {
      me = await get("/v1/whoami");
      sessionStorage.setItem(TOKEN_KEY, token);
      location.hash = "#/projects";
    } catch (err) {
      token = null;
      me = null;
      error.textContent = `Sign-in failed: ${reason(err)}`;
    }
  });
  return form;
}

// --- projects → environments → services → releases/deployments → logs ---------------------------

async function projectsView() {
  const projects = await get("/v1/projects");
  return h(
    "section",
    {},
    h("h1", {}, "Projects"),
    table(
      ["Project", "Name", "Created"],
      projects.map((p) => h("tr", {}, h("td", {}, h("a", { href: `#/p/${enc(p.slug)}` }, p.slug)), h("td", {}, p.name), h("td", {}, when(p.created_at)))),
      "No projects yet: create one with `POST /v1/projects` or `enclii init`.",
    ),
  );
}

function pipelineRows(runs) {
  return runs.map(({ release, pipeline }) =>
    h(
      "tr",
      {},
      h("td", {}, pipeline ? h("a", { href: `#/pipeline/${pipeline.id}` }, `#${pipeline.id}`) : "—"),
      h("td", {}, release.service),
      h("td", {}, release.environment),
      h("td", { class: "mono" }, release.git_sha.slice(0, 10)),
      h("td", {}, releaseStatus(release)),
      h("td", {}, pipeline ? badge(pipeline.state) : "pruned"),
      h("td", {}, when(release.created_at)),
    ),
  );
}

async function projectView(project) {
  const p = enc(project);
  const [environments, services, runs, deployments, domains] = await Promise.all([
    get(`/v1/projects/${p}/environments`),
    get(`/v1/projects/${p}/services`),
    get(`/v1/projects/${p}/pipelines?limit=15`),
    get(`/v1/projects/${p}/deployments?limit=15`),
    get(`/v1/projects/${p}/domains`),
  ]);
  return h(
    "section",
    {},
    h("h1", {}, `Project ${project}`),
    h(
      "div",
      { class: "grid" },
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Environments"),
        table(
          ["Environment", "Region", "Budget", "State"],
          environments.map((e) =>
            h(
              "tr",
              {},
              h("td", {}, h("a", { href: `#/p/${p}/e/${enc(e.name)}` }, e.name)),
              h("td", {}, e.region ?? "—"),
              h("td", {}, e.budget_cents === null ? "—" : `$${(e.budget_cents / 100).toFixed(2)}/month`),
              h("td", {}, e.paused_at ? badge("paused") : badge("running")),
            ),
          ),
        ),
      ),
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Services"),
        table(
          ["Service", "Environment", "Branch"],
          services.map((s) =>
            h("tr", {}, h("td", {}, h("a", { href: `#/p/${p}/s/${enc(s.name)}` }, s.name)), h("td", {}, s.environment), h("td", {}, s.branch ?? "—")),
          ),
        ),
      ),
    ),
    h("h2", {}, "Domains"),
    domainTable(project, domains),
    h("h2", {}, "Pipelines"),
    table(["Run", "Service", "Environment", "Commit", "Release", "Pipeline", "Started"], pipelineRows(runs)),
    h("h2", {}, "Deployments"),
    deploymentTable(deployments),
  );
}

/** Custom domains: state (with what the last check found), certificate, and the records to create. */
function domainTable(project, domains) {
  const record = (r) => h("div", { class: "mono" }, `${r.type} ${r.name} → ${r.value}`);
  const tls = (c) =>
    c
      ? [badge(c.status), c.not_after ? h("div", {}, `until ${when(c.not_after)}`) : null,
         c.error ? h("div", { class: "waiting" }, c.error) : null]
      : "—";
  return table(
    ["Host", "Service", "Environment", "State", "HTTPS", "DNS records", ""],
    domains.map((d) =>
      h(
        "tr",
        { dataset: { domain: d.host } },
        h("td", { class: "mono" }, `${d.host}${d.path === "/" ? "" : d.path}`),
        h("td", {}, d.service),
        h("td", {}, d.environment),
        h("td", {}, badge(d.status), d.detail ? h("div", { class: "waiting" }, d.detail) : null),
        h("td", { dataset: { certificate: d.certificate?.status ?? "none" } }, tls(d.certificate)),
        h("td", {}, d.status === "verified" ? null : record(d.ownership), record(d.target)),
        h(
          "td",
          {},
          // Verified: checking again only orders a certificate whose last order failed.
          d.status === "verified" && d.certificate?.status !== "failed"
            ? null
            : action("Check now", null, () => api("POST", `/v1/projects/${enc(project)}/domains/${d.id}/verify`), render),
        ),
      ),
    ),
    "No custom domains: add one with `enclii domains add <host> --service <name>`.",
  );
}

/** One environment: its services as they run now (release, replicas, health, P95, errors). */
async function environmentView(project, environment) {
  const p = enc(project);
  const [services, deployments] = await Promise.all([
    get(`/v1/projects/${p}/services`),
    get(`/v1/projects/${p}/deployments?limit=50`),
  ]);
  let runtime;
  try {
    const status = await get(`/v1/projects/${p}/status?environment=${enc(environment)}`);
    runtime = table(
      ["Service", "Release", "Replicas", "Restarts", "Health", "P95", "Errors", "Canary", "URL"],
      status.map((r) =>
        h(
          "tr",
          { dataset: { service: r.service } },
          h("td", {}, h("a", { href: `#/p/${p}/s/${enc(r.service)}` }, r.service)),
          h("td", {}, r.release ?? "—"),
          h("td", {}, `${r.replicas_ready}/${r.replicas_desired}`),
          h("td", {}, r.restarts ?? "—"),
          h("td", {}, badge(r.health)),
          h("td", {}, r.p95_ms === null ? "—" : `${Math.round(r.p95_ms)} ms`),
          h("td", {}, `${(r.error_rate * 100).toFixed(1)}%`),
          h("td", {}, r.canary_percent ? `${r.canary_percent}% → ${r.canary_release}` : "—"),
          h("td", {}, externalLink(r.url)),
        ),
      ),
      "Nothing runs here yet.",
    );
  } catch (e) {
    runtime = h("p", { class: "muted" }, `Runtime status unavailable: ${reason(e)}`);
  }
  const here = services.filter((s) => s.environment === environment);
  return h(
    "section",
    {},
    h("h1", {}, h("a", { href: `#/p/${p}` }, project), ` / ${environment}`),
    h("h2", {}, "Runtime"),
    runtime,
    h("h2", {}, "Services"),
    table(
      ["Service", "Branch", "Spec version#"],
      here.map((s) => h("tr", {}, h("td", {}, h("a", { href: `#/p/${p}/s/${enc(s.name)}` }, s.name)), h("td", {}, s.branch ?? "—"), h("td", { class: "num" }, s.spec_version))),
      "No service has this as its environment.",
    ),
    h("h2", {}, "Deployments"),
    deploymentTable(deployments.filter((d) => d.environment === environment)),
  );
}

function deploymentTable(deployments) {
  return table(
    ["#", "Service", "Environment", "Release", "Strategy", "Status", "Detail", "URL", "When"],
    deployments.map((d) =>
      h(
        "tr",
        {},
        h("td", {}, d.id),
        h("td", {}, d.service),
        h("td", {}, d.environment),
        h("td", {}, d.release_id),
        h("td", {}, d.strategy + (d.canary_percent ? ` ${d.canary_percent}%` : "")),
        h("td", {}, badge(d.status)),
        h("td", { class: "muted" }, d.detail ?? ""),
        h("td", {}, externalLink(d.url)),
        h("td", {}, when(d.created_at)),
      ),
    ),
  );
}

async function serviceView(project, service) {
  const p = enc(project);
  const s = enc(service);
  const [detail, releases, deployments] = await Promise.all([
    get(`/v1/projects/${p}/services/${s}`),
    get(`/v1/projects/${p}/services/${s}/releases?limit=20`),
    get(`/v1/projects/${p}/deployments?service=${s}&limit=20`),
  ]);
  const reload = () => render();
  const releaseRows = releases.map((r) =>
    h(
      "tr",
      { dataset: { release: r.id } },
      h("td", {}, r.id),
      h("td", {}, r.environment),
      h("td", { class: "mono" }, r.git_sha.slice(0, 10)),
      h("td", {}, releaseStatus(r)),
      h("td", { class: "mono" }, r.digest ? r.digest.slice(0, 19) : "—"),
      h("td", {}, r.signature ? "signed" : "—"),
      h("td", {}, r.pipeline_id ? h("a", { href: `#/pipeline/${r.pipeline_id}` }, `#${r.pipeline_id}`) : "—"),
      h("td", {}, when(r.created_at)),
      h(
        "td",
        {},
        r.status === "ready"
          ? action(
              "Roll back to this",
              `Redeploy release ${r.id} of ${service}?`,
              () => api("POST", `/v1/projects/${p}/services/${s}/rollback`, { to: r.id, environment: r.environment }),
              reload,
            )
          : "",
      ),
    ),
  );
  const logs = h("pre", { class: "log", id: "runtime-log" });
  const status = h("span", { class: "live off" }, "○ connecting…");
  stream(
    `/v1/projects/${p}/services/${s}/logs?follow=true&tail=200`,
    (name, data) => {
      if (name === "line") {
        const line = JSON.parse(data);
        appendLog(logs, `${line.replica} | ${line.line}`);
      } else if (name === "problem") {
        appendLog(logs, `[${JSON.parse(data).detail}]`);
      }
    },
    { status },
  );
  return h(
    "section",
    {},
    h("h1", {}, h("a", { href: `#/p/${p}` }, project), ` / ${service}`),
    h("p", { class: "muted" }, `Environment ${detail.environment ?? "—"} · branch ${detail.branch ?? "—"}`),
    h("h2", {}, "Releases"),
    table(["#", "Environment", "Commit", "Status", "Digest", "Signature", "Pipeline", "Built", ""], releaseRows),
    h("h2", {}, "Deployments"),
    deploymentTable(deployments),
    h("h2", {}, "Live logs ", status),
    logs,
  );
}

// --- pipelines as a step graph -------------------------------------------------------------------

/** Columns of steps: a step sits one column right of the deepest step it needs. */
function columns(steps) {
  const depth = new Map();
  const byName = new Map(steps.map((s) => [s.name, s]));
  const visit = (s, seen = new Set()) => {
    if (depth.has(s.name)) return depth.get(s.name);
    if (seen.has(s.name)) return 0;
    seen.add(s.name);
    const d = s.needs.length ? 1 + Math.max(...s.needs.map((n) => (byName.has(n) ? visit(byName.get(n), seen) : 0))) : 0;
    depth.set(s.name, d);
    return d;
  };
  steps.forEach((s) => visit(s));
  const cols = [];
  for (const s of steps) (cols[depth.get(s.name)] ??= []).push(s);
  return cols;
}

async function pipelineView(id) {
  const graph = h("div", { class: "graph", id: "graph" });
  const title = h("h1", {}, `Pipeline #${id}`);
  const state = h("span");
  const status = h("span", { class: "live off" }, "○ connecting…");
  const logTitle = h("h2", {}, "Step log");
  const log = h("pre", { class: "log", id: "step-log" }, "Select a step to see its log.");
  let selected = null;
  let logStream = null;
  let last = null;

  const showLog = (step) => {
    selected = step.name;
    logStream?.abort();
    log.textContent = "";
    delete log.dataset.trimmed;
    logTitle.textContent = `Log of ${step.name} (job ${step.job})`;
    logStream = stream(
      `/v1/jobs/${step.job}/logs/stream`,
      (name, data) => {
        const event = JSON.parse(data);
        if (name === "line") appendLog(log, event.line);
        if (name === "end") appendLog(log, `— ${event.state} —`);
        if (name === "problem") appendLog(log, `[${event.detail}]`);
      },
      { once: true },
    );
    draw(last);
  };

  const cancel = action("Cancel run", `Cancel every unfinished step of pipeline ${id}?`, () => api("POST", `/v1/pipelines/${id}/cancel`), null, "danger");
  const draw = (run) => {
    if (!run) return;
    last = run;
    state.replaceChildren(" ", badge(run.state));
    // A finished run has nothing to cancel.
    cancel.hidden = run.state !== "running";
    const cols = columns(run.steps);
    graph.replaceChildren(
      ...cols.flatMap((col, i) => [
        ...(i ? [h("span", { class: "arrow" }, "→")] : []),
        h(
          "div",
          { class: "column" },
          col.map((step) =>
            h(
              "div",
              {
                class: `step s-${step.state}${step.name === selected ? " selected" : ""}`,
                dataset: { step: step.name, state: step.state },
                onclick: () => showLog(step),
                title: step.last_error ?? "",
              },
              h("div", { class: "name" }, step.name),
              h("div", { class: "meta" }, `${step.state}${step.attempt > 1 ? ` · attempt ${step.attempt}` : ""}`),
              step.last_error ? h("div", { class: "meta muted" }, step.last_error.slice(0, 80)) : null,
            ),
          ),
        ),
      ]),
    );
  };

  const run = await get(`/v1/pipelines/${id}`);
  draw(run);
  const onEvent = (name, data) => {
    if (name === "snapshot") draw(JSON.parse(data));
    if (name === "problem") flash(`Pipeline #${id}: ${JSON.parse(data).detail}`, "error");
  };
  if (run.state === "running") stream(`/v1/pipelines/${id}/stream`, onEvent, { status, once: true });
  else status.replaceChildren();
  return h(
    "section",
    {},
    title,
    h("p", {}, h("a", { href: `#/p/${enc(run.project)}` }, run.project), ` · ${run.name} · `, state, " ", status, " ", cancel),
    h("div", { class: "card" }, graph),
    logTitle,
    log,
  );
}

// --- operators: the queues ------------------------------------------------------------------------

/** A bar chart of per-minute counts (completed stacked on dead) with the run-time P95 as a line. */
function throughputChart(t) {
  const W = 600;
  const H = 150;
  const pad = 22;
  const n = t.buckets.length || 1;
  const maxCount = Math.max(1, ...t.buckets.map((b) => b.completed + b.dead + b.cancelled));
  const maxP95 = Math.max(0.001, ...t.buckets.map((b) => b.run_p95_seconds ?? 0));
  const bw = (W - 2 * pad) / n;
  const svgNs = "http://www.w3.org/2000/svg";
  const el = (tag, attrs) => {
    const e = document.createElementNS(svgNs, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", id: "throughput-chart" });
  const y = (v, max) => H - pad - (v / max) * (H - 2 * pad);
  t.buckets.forEach((b, i) => {
    const x = pad + i * bw + 1;
    const ok = el("rect", { x, y: y(b.completed, maxCount), width: bw - 2, height: H - pad - y(b.completed, maxCount), fill: "#1f8a4c" });
    const badTop = y(b.completed + b.dead + b.cancelled, maxCount);
    const bad = el("rect", { x, y: badTop, width: bw - 2, height: y(b.completed, maxCount) - badTop, fill: "#c9372c" });
    const tip = el("title", {});
    tip.textContent = `${new Date(b.minute).toLocaleTimeString()}: ${b.completed} completed, ${b.dead} dead, ${b.cancelled} cancelled, P95 ${secs(b.run_p95_seconds)}`;
    ok.append(tip);
    svg.append(ok, bad);
  });
  const points = t.buckets
    .map((b, i) => (b.run_p95_seconds === null ? null : `${pad + (i + 0.5) * bw},${y(b.run_p95_seconds, maxP95)}`))
    .filter(Boolean)
    .join(" ");
  if (points) svg.append(el("polyline", { points, fill: "none", stroke: "#1f6fd1", "stroke-width": 2 }));
  for (const point of points ? points.split(" ") : []) {
    const [cx, cy] = point.split(",");
    svg.append(el("circle", { cx, cy, r: 3, fill: "#1f6fd1" }));
  }
  const wrap = h("div", {}, h("p", { class: "muted" }, `bars: up to ${maxCount} jobs/min · line: run-time P95, top = ${secs(maxP95)}`));
  wrap.append(svg);
  return wrap;
}

function depthTables(stats) {
  const states = ["pending", "scheduled", "available", "running", "dead"];
  const sum = (key) => {
    const m = new Map();
    for (const row of stats.depth) {
      const k = row[key];
      if (!m.has(k)) m.set(k, Object.fromEntries(states.map((s) => [s, 0])));
      m.get(k)[row.state] += row.count;
    }
    return [...m.entries()].sort();
  };
  const oldest = new Map(stats.oldest_available_seconds);
  const rows = (key) =>
    sum(key).map(([k, c]) =>
      h("tr", { dataset: { [key]: k } }, h("td", {}, k), states.map((s) => h("td", { class: "num", dataset: { state: s } }, c[s])), key === "kind" ? h("td", { class: "num" }, secs(oldest.get(k))) : null),
    );
  return h(
    "div",
    { class: "grid" },
    h("div", { class: "card" }, h("h2", {}, "Depth per kind"), table(["Kind", ...states.map((s) => `${s}#`), "Oldest waiting#"], rows("kind"), "The queue is empty.")),
    h("div", { class: "card" }, h("h2", {}, "Depth per project"), table(["Project", ...states.map((s) => `${s}#`)], rows("project"), "The queue is empty.")),
  );
}

/** A selector for the focused button of a table row inside `within` (rows carry a data-* key). */
function focusedRowButton(within) {
  const el = document.activeElement;
  const row = el?.tagName === "BUTTON" && within.contains(el) ? el.closest("tr") : null;
  const key = row && Object.keys(row.dataset)[0];
  if (!key) return null;
  const attr = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  return `tr[data-${attr}="${CSS.escape(row.dataset[key])}"] button`;
}

/** What a worker cannot run, kinds grouped by reason ("clone, build: no Docker engine at …"). */
function cannotRun(unavailable) {
  const byReason = new Map();
  for (const [kind, why] of Object.entries(unavailable ?? {})) byReason.set(why, [...(byReason.get(why) ?? []), kind]);
  if (!byReason.size) return "—";
  return [...byReason].map(([why, kinds]) => h("div", { class: "unavailable" }, h("b", {}, kinds.join(", ")), `: ${why}`));
}

async function queueView() {
  const status = h("span", { class: "live off" }, "○ connecting…");
  const body = h("div", { id: "queue" }, h("p", { class: "muted" }, "Waiting for the first snapshot…"));
  const retry = (job) => () => api("POST", `/v1/jobs/${job.id}/retry`);
  const cancel = (job) => () => api("POST", `/v1/jobs/${job.id}/cancel`);
  const draw = (snap) => {
    const t = snap.throughput;
    const total = t.buckets.reduce((a, b) => a + b.completed + b.dead + b.cancelled, 0);
    const failed = t.buckets.reduce((a, b) => a + b.dead, 0);
    const retried = t.buckets.reduce((a, b) => a + b.retried, 0);
    const running = snap.stats.depth.filter((r) => r.state === "running").reduce((a, r) => a + r.count, 0);
    const waiting = snap.stats.depth.filter((r) => r.state === "available").reduce((a, r) => a + r.count, 0);
    const kpi = (label, value, id) => h("div", { class: "kpi", id }, h("b", {}, value), h("span", { class: "muted" }, label));
    // Each snapshot rebuilds the view: a keyboard user's focus on a row's button comes back.
    const refocus = focusedRowButton(body);
    body.replaceChildren(
      h(
        "div",
        { class: "kpis" },
        kpi("waiting", waiting, "kpi-waiting"),
        kpi("running", running, "kpi-running"),
        kpi(`finished / ${t.minutes} min`, total, "kpi-finished"),
        kpi("dead / window", failed, "kpi-dead"),
        kpi("retried / window", retried, "kpi-retried"),
        kpi("run P50 · P95", `${secs(t.run_p50_seconds)} · ${secs(t.run_p95_seconds)}`),
        kpi("start P95", secs(t.start_p95_seconds)),
      ),
      h("div", { class: "card" }, h("h2", {}, `Throughput and latency, last ${t.minutes} minutes`),
        t.truncated ? h("p", { class: "muted" }, "More jobs finished than were read: the counts are a lower bound.") : null,
        throughputChart(t),
        h("div", { class: "legend" }, h("span", {}, h("i", { class: "sw-ok" }), "completed"), h("span", {}, h("i", { class: "sw-bad" }), "dead/cancelled"), h("span", {}, h("i", { class: "sw-p95" }), "run-time P95"))),
      depthTables(snap.stats),
      h("h2", {}, "Dead jobs"),
      table(
        ["Job", "Kind", "Project", "Attempts", "Last error", "Finished", ""],
        snap.dead.map((j) =>
          h(
            "tr",
            { dataset: { job: j.id } },
            h("td", {}, j.pipeline ? h("a", { href: `#/pipeline/${j.pipeline}` }, `${j.id}`) : j.id),
            h("td", {}, j.kind),
            h("td", {}, j.project),
            h("td", { class: "num" }, j.attempt),
            h("td", { class: "muted error" }, j.last_error ?? ""),
            h("td", {}, whenIso(j.finished_at)),
            h("td", {}, action("Retry", null, retry(j), null, "primary")),
          ),
        ),
        "No dead jobs.",
      ),
      h("h2", {}, "Running and waiting jobs"),
      table(
        ["Job", "Kind", "Project", "State", "Attempt#", "Worker", "Due", ""],
        snap.active.map((j) =>
          h(
            "tr",
            { dataset: { job: j.id } },
            h("td", {}, j.pipeline ? h("a", { href: `#/pipeline/${j.pipeline}` }, `${j.id}`) : j.id),
            h("td", {}, j.kind),
            h("td", {}, j.project),
            h("td", {}, badge(j.state)),
            h("td", { class: "num" }, j.attempt),
            h("td", { class: "mono" }, j.worker ?? "—"),
            h("td", {}, whenIso(j.run_at)),
            h("td", {}, j.cancel_requested ? "cancelling…" : action("Cancel", `Cancel job ${j.id}?`, cancel(j), null, "danger")),
          ),
        ),
        "Nothing is running or waiting.",
      ),
      h("h2", {}, "Workers"),
      table(
        ["Worker", "Host", "Status", "Running#", "Concurrency#", "Kinds", "Cannot run", "Last heartbeat", "Started"],
        snap.workers.map((w) =>
          h(
            "tr",
            { dataset: { worker: w.id } },
            h("td", { class: "mono" }, w.id),
            h("td", {}, w.host),
            h("td", {}, badge(w.status)),
            h("td", { class: "num" }, w.running),
            h("td", { class: "num" }, w.concurrency),
            h("td", { class: "muted" }, w.kinds.join(", ")),
            h("td", {}, cannotRun(w.unavailable)),
            h("td", {}, whenIso(w.last_seen)),
            h("td", {}, whenIso(w.started_at)),
          ),
        ),
        "No worker has reported yet.",
      ),
      h("h2", {}, "Per-project limits"),
      controlsTable(snap),
    );
    if (refocus) body.querySelector(refocus)?.focus();
  };
  stream("/v1/queue/stream", (name, data) => {
    if (name === "snapshot") draw(JSON.parse(data));
    if (name === "problem") flash(`Queue view: ${JSON.parse(data).detail}`, "error");
  }, { status });
  return h("section", {}, h("h1", {}, "Queue ", status), body);
}

function controlsTable(snap) {
  // Every project with work or a control, so any of them can be paused.
  const projects = new Set([...snap.controls.map((c) => c.project), ...snap.stats.depth.map((r) => r.project)]);
  const controls = new Map(snap.controls.map((c) => [c.project, c]));
  return table(
    ["Project", "Max running#", "Jobs/min#", "State", "Changed by", ""],
    [...projects].sort().map((project) => {
      const c = controls.get(project) ?? {};
      const path = `/v1/projects/${enc(project)}/queue/${c.paused ? "resume" : "pause"}`;
      return h(
        "tr",
        { dataset: { project } },
        h("td", {}, project),
        h("td", { class: "num" }, c.max_running ?? "∞"),
        h("td", { class: "num" }, c.jobs_per_minute ?? "∞"),
        h("td", {}, badge(c.paused ? "paused" : "running")),
        h("td", { class: "muted" }, c.updated_by ?? ""),
        h("td", {}, action(c.paused ? "Resume" : "Pause", c.paused ? null : `Pause ${project}'s queue? Running jobs finish; nothing new starts.`, () => api("POST", path))),
      );
    }),
    "No project has work or limits.",
  );
}

async function auditView() {
  const events = await get("/v1/audit?limit=100");
  return h(
    "section",
    {},
    h("h1", {}, "Audit trail"),
    table(
      ["When", "Actor", "Action", "Entity", "Project"],
      events.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", { class: "mono", dataset: { action: e.action } }, e.action), h("td", {}, `${e.entity_type} ${e.entity}`), h("td", {}, e.project ?? "—"))),
    ),
  );
}

// --- routing ------------------------------------------------------------------------------------

const routes = [
  [/^#\/signin$/, () => signInView()],
  [/^#\/projects$/, () => projectsView()],
  [/^#\/p\/([^/]+)$/, (m) => projectView(decodeURIComponent(m[1]))],
  [/^#\/p\/([^/]+)\/e\/([^/]+)$/, (m) => environmentView(decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
  [/^#\/p\/([^/]+)\/s\/([^/]+)$/, (m) => serviceView(decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
  [/^#\/pipeline\/(\d+)$/, (m) => pipelineView(Number(m[1]))],
  [/^#\/queue$/, () => queueView()],
  [/^#\/audit$/, () => auditView()],
];

async function render() {
  scope.abort();
  scope = new AbortController();
  const mine = scope;
  const signedIn = Boolean(token);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  if (!signedIn && location.hash !== "#/signin") {
    location.hash = "#/signin";
    return;
  }
  if (signedIn && !me) {
    try {
      me = await get("/v1/whoami");
    } catch (e) {
      // A refused token goes back to sign-in; anything else (server down) says so.
      if (e.status === 401) {
        signOut("Your token was refused (expired or revoked): sign in again.");
      } else if (token && mine === scope) {
        const again = h("button", { class: "primary" }, "Try again");
        again.addEventListener("click", render);
        view.replaceChildren(h("div", { class: "card" }, h("h1", {}, "Cannot reach Enclii"), h("p", {}, reason(e)), again));
      }
      return;
    }
  }
  // A token restricted to some scopes says so: its holder sees why an action is refused.
  const who = document.getElementById("who");
  const limited = me && Array.isArray(me.scopes) && !me.scopes.includes("deploy");
  who.textContent = me ? `${me.subject}${limited ? ` (scopes: ${me.scopes.join(", ")})` : ""}` : "";
  const hash = location.hash || "#/projects";
  const route = routes.find(([re]) => re.test(hash));
  try {
    const content = route ? await route[1](hash.match(route[0])) : h("p", {}, "No such page.");
    // The user moved on while this view loaded: its streams are already ended; show nothing.
    if (mine !== scope) return;
    view.replaceChildren(content);
  } catch (e) {
    if (mine !== scope) return;
    view.replaceChildren(h("div", { class: "card" }, h("h1", {}, "Cannot show this page"), h("p", {}, e.message), e.hint ? h("p", { class: "muted" }, e.hint) : null));
  }
}

document.getElementById("signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => {
  // A message about the page just left does not follow the user to the next one.
  if (!keepFlash) document.getElementById("flash").hidden = true;
  keepFlash = false;
  render();
});
render();
