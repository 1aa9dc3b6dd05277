// Drives the Enclii dashboard in a real headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core: load, sign in, watch a pipeline progress, open a step's log, retry a dead job,
// pause and resume a project's queue, see what each worker cannot run; then, signed in with a
// read-only token, see Pause and Retry refused with the API's reason; a release no worker can
// build shows why it waits. Screenshots go to $ARTIFACTS_DIR.
//
// Run by cli/tests/dashboard.rs, which starts a real server, a real build and a dead job first.
// Input (environment): ENCLII_URL, ENCLII_TOKEN, PROJECT, SERVICE, GIT_SHA (the commit to build once
// signed in, so that the browser is watching when it starts), DEAD_JOB_ID (to retry),
// REFUSED_JOB_ID (a dead job the read-only token may not retry), ARTIFACTS_DIR.
// Output: one JSON line on stdout with what was seen; exit code 1 with the reason on failure.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
};
const url = env("ENCLII_URL");
const token = env("ENCLII_TOKEN");
const project = env("PROJECT");
const service = env("SERVICE");
const sha = env("GIT_SHA");
const deadJob = env("DEAD_JOB_ID");
const refusedJob = env("REFUSED_JOB_ID");
const artifacts = env("ARTIFACTS_DIR");
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // As root in a sandbox-less container, on a closed network (no background connections).
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const seen = { pipelineStates: [], stepStates: {} };
const shot = (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
let page;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(e.message));
  // Anything the Content-Security-Policy blocked (an inline style or script) is a bug of the page.
  page.on("console", (m) => {
    if (m.type() === "error" && /Content.Security.Policy/i.test(m.text())) consoleErrors.push(m.text());
  });
  // The token travels only in a header: no request the page makes has it in its URL.
  const secretsInUrls = [];
  page.on("request", (r) => {
    if (r.url().includes("enclii_pat_")) secretsInUrls.push(r.url().replace(/enclii_pat_\w+/g, "enclii_pat_…"));
  });

  // Load: an unauthenticated visitor lands on the sign-in form.
  await page.goto(`${url}/`);
  await page.waitForSelector("form.signin");
  // A wrong token is refused with the API's reason, and nothing is stored.
  await page.fill("#token", "enclii_pat_wrongtoken00_0123456789abcdefghijABCDEFGHIJ0123456789abc");
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#signin-error")?.textContent.includes("Sign-in failed"));
  seen.wrongTokenMessage = await page.textContent("#signin-error");
  await shot(page, "01-sign-in-refused");

  // Sign in.
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector(`a[href="#/p/${project}"]`);
  await shot(page, "02-projects");

  // Start the build now (as `enclii` or a push would), then find it from the project page.
  const res = await fetch(`${url}/v1/projects/${project}/services/${service}/releases`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ git_sha: sha, deploy: false }),
  });
  const started = await res.json();
  if (res.status !== 202) throw new Error(`the build was not started: ${res.status} ${JSON.stringify(started)}`);
  const pipeline = started.pipeline;
  seen.pipeline = pipeline;
  seen.release = started.release.id;

  // A custom domain, pending: the project page shows the records to create, and checks it again.
  const domain = await fetch(`${url}/v1/projects/${project}/domains`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ host: "shop.example.com", service }),
  });
  if (domain.status !== 201) throw new Error(`the domain was not added: ${domain.status} ${await domain.text()}`);

  // Projects → project: its services, domains and pipelines.
  await page.click(`a[href="#/p/${project}"]`);
  await page.waitForSelector(`a[href="#/pipeline/${pipeline}"]`);
  await shot(page, "03-project");
  const domainRow = 'tr[data-domain="shop.example.com"]';
  seen.domainRow = await page.textContent(domainRow);
  seen.domainCertificate = await page.getAttribute(`${domainRow} td[data-certificate]`, "data-certificate");
  await page.click(`${domainRow} button`);
  await page.waitForFunction(() => document.querySelector("#flash")?.textContent.includes("Check now: done"));
  seen.domainChecked = await page.textContent("#flash");
  await page.waitForSelector(`a[href="#/pipeline/${pipeline}"]`);
  // An environment: its services and what runs there (no deploy target in this run: it says so).
  await page.click(`a[href="#/p/${project}/e/prod"]`);
  await page.waitForFunction(() => document.querySelector("#view h2")?.textContent === "Runtime");
  seen.environmentRuntime = await page.textContent("#view section > p, #view table");
  await page.click(`#view h1 a[href="#/p/${project}"]`);
  await page.waitForSelector(`a[href="#/pipeline/${pipeline}"]`);

  // Watch the pipeline progress, live: record every state the graph shows until the run ends.
  await page.click(`a[href="#/pipeline/${pipeline}"]`);
  await page.waitForSelector(".step");
  await page.exposeFunction("recordStates", (run, steps) => {
    if (seen.pipelineStates.at(-1) !== run) seen.pipelineStates.push(run);
    for (const [name, state] of steps) {
      const list = (seen.stepStates[name] ??= []);
      if (list.at(-1) !== state) list.push(state);
    }
  });
  await page.evaluate(() => {
    const report = () => {
      const run = document.querySelector("#view .badge")?.dataset.state;
      const steps = [...document.querySelectorAll(".step")].map((s) => [s.dataset.step, s.dataset.state]);
      window.recordStates(run, steps);
    };
    report();
    window.pipelineObserver = new MutationObserver(report);
    window.pipelineObserver.observe(document.getElementById("view"), { subtree: true, childList: true, attributes: true });
  });
  await page.waitForSelector(".step.s-running", { timeout: 60_000 });
  await shot(page, "04-pipeline-running");
  // A running step's log, live.
  await page.click(".step.s-running");
  await page.waitForFunction(() => document.querySelector("#step-log")?.textContent.trim().length > 0, null, { timeout: 60_000 });
  await page.waitForFunction(() => document.querySelector("#view .badge")?.dataset.state === "succeeded", null, { timeout: 180_000 });
  await page.evaluate(() => window.pipelineObserver.disconnect());
  await shot(page, "05-pipeline-succeeded");
  seen.stepLog = (await page.textContent("#step-log")).slice(0, 2000);

  // Operators: the queue, live. The dead job is listed; retry it.
  await page.click('a[href="#/queue"]');
  await page.waitForSelector("#kpi-waiting");
  await page.waitForSelector(`tr[data-job="${deadJob}"]`, { timeout: 30_000 });
  // The chart shows the jobs that just finished (the build's steps, the dead clone).
  await page.waitForFunction(() => [...document.querySelectorAll("#throughput-chart rect")].some((r) => Number(r.getAttribute("height")) > 0));
  seen.workers = await page.locator("tr[data-worker]").count();
  seen.aliveWorkers = await page.locator("tr[data-worker] [data-state=alive]").count();
  // What each worker cannot run, and why (this server has no deploy target).
  seen.cannotRun = await page.locator("tr[data-worker] .unavailable").allTextContents();
  await shot(page, "06-queue");
  await page.click(`tr[data-job="${deadJob}"] button.primary`);
  await page.waitForFunction(() => document.querySelector("#flash")?.textContent.startsWith("Retry: done"));
  await shot(page, "07-dead-job-retried");

  // Pause the project's queue, then resume it.
  page.on("dialog", (d) => d.accept());
  const row = `tr[data-project="${project}"]`;
  await page.click(`${row} button`);
  await page.waitForSelector(`${row} [data-state=paused]`, { timeout: 15_000 });
  await shot(page, "08-project-paused");
  await page.click(`${row} button`);
  await page.waitForSelector(`${row} [data-state=running]`, { timeout: 15_000 });

  // A read-only token (the same user, restricted to the `read` scope): the page shows the queue,
  // but Pause and Retry are refused by the API, with its reason, and nothing changes.
  const created = await fetch(`${url}/v1/tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ name: "dashboard-read-only", scopes: ["read"], expires_in_days: 1 }),
  });
  const readOnly = await created.json();
  if (created.status !== 201) throw new Error(`no read-only token: ${created.status} ${JSON.stringify(readOnly)}`);
  await page.click("#signout");
  await page.waitForSelector("form.signin");
  seen.tokenAfterSignOut = await page.evaluate(() => sessionStorage.getItem("enclii.token"));
  await page.fill("#token", readOnly.token);
  await page.click("button[type=submit]");
  await page.waitForSelector(`a[href="#/p/${project}"]`);
  seen.whoReadOnly = await page.textContent("#who");
  await page.click('a[href="#/queue"]');
  await page.waitForSelector(`${row} [data-state=running]`);
  await page.click(`${row} button`);
  await page.waitForFunction(() => document.querySelector("#flash")?.textContent.startsWith("Pause refused"));
  seen.pauseRefused = await page.textContent("#flash");
  seen.pauseRefusedRole = await page.getAttribute("#flash", "role");
  // Still running, for the page (its live view, redrawn at the next heartbeat) as for the API;
  // a keyboard user's focus on the row's button survives the redraw.
  await page.focus(`${row} button`);
  await page.evaluate(() => (window.beforeRedraw = document.querySelector("#queue .kpis")));
  // With an idle queue only heartbeats change, and those are re-sent every 15 s.
  await page.waitForFunction(() => !window.beforeRedraw.isConnected, null, { timeout: 40_000 });
  seen.stateAfterRefusedPause = await page.getAttribute(`${row} .badge`, "data-state");
  seen.focusAfterRedraw = await page.evaluate(() => document.activeElement?.closest("tr")?.dataset.project ?? document.activeElement?.tagName);
  // The other dead job: Retry is refused.
  await page.click(`tr[data-job="${refusedJob}"] button.primary`);
  await page.waitForFunction(() => document.querySelector("#flash")?.textContent.startsWith("Retry refused"));
  seen.retryRefused = await page.textContent("#flash");
  await shot(page, "10-refused-read-only");

  // The audit trail shows the actions.
  await page.click('a[href="#/audit"]');
  await page.waitForSelector("td[data-action]");
  seen.audit = await page.locator("td[data-action]").allTextContents();
  await shot(page, "09-audit");

  // Data the page does not trust (answers stubbed here): a deployment URL that is not http(s) is
  // shown as text, never as a link; a live log pane keeps only its last 2000 lines.
  const deployment = (id, url) => ({ id, service, environment: "prod", release_id: 1, strategy: "rolling", canary_percent: null,
    status: "healthy", detail: null, url, created_at: Date.now() });
  await page.route(/\/v1\/projects\/[^/]+\/deployments/, (route) => route.fulfill({ status: 200, contentType: "application/json",
    body: JSON.stringify([deployment(1, "javascript:alert(document.domain)"), deployment(2, "https://shop.example.test/")]) }));
  const lines = Array.from({ length: 2500 }, (_, i) => `event: line\ndata: ${JSON.stringify({ replica: "r0", line: `line ${i}` })}\n\n`).join("");
  await page.route(/\/logs\?follow=true/, (route) => route.fulfill({ status: 200, contentType: "text/event-stream", body: lines }));
  // A release no worker can build says why, under its status.
  const waiting = "waiting: no worker can run clone (no Docker engine at unix:///var/run/docker.sock; start Docker or set ENCLII_DOCKER_HOST)";
  await page.route(/\/services\/[^/]+\/releases\?/, (route) => route.fulfill({ status: 200, contentType: "application/json",
    body: JSON.stringify([{ id: 77, environment: "prod", git_sha: "0123456789abcdef", status: "building", digest: null, signature: null,
      pipeline_id: 9, created_at: Date.now(), failure: null, waiting }]) }));
  await page.click('a[href="#/projects"]');
  await page.click(`a[href="#/p/${project}"]`);
  await page.click(`a[href="#/p/${project}/s/${service}"]`);
  await page.waitForFunction(() => document.querySelector("#runtime-log")?.textContent.includes("r0 | line 2499"));
  seen.javascriptLinks = await page.locator('a[href^="javascript:"]').count();
  seen.httpsLinks = await page.locator('a[href="https://shop.example.test/"]').count();
  seen.logLines = await page.evaluate(() => document.querySelector("#runtime-log").childNodes.length);
  seen.releaseWaiting = await page.textContent('tr[data-release="77"] .waiting');
  await shot(page, "11-untrusted-data");

  seen.consoleErrors = consoleErrors;
  seen.secretsInUrls = secretsInUrls;
  console.log(JSON.stringify(seen));
} catch (e) {
  if (page) await shot(page, "failure").catch(() => {});
  console.error(`dashboard test failed: ${e.message}\nseen so far: ${JSON.stringify(seen)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
