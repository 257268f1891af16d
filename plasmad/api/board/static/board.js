// The review board: one page, four views (pages, queue, trainings, health), kept current by
// plasmad's events. The stored jobs and files are the truth: an event only says what to read
// again, so a missed event (a reconnect, a restart of plasmad) costs a refresh, never a wrong view.

import { get } from "./api.js";
import { h } from "./dom.js";
import * as health from "./health.js";
import * as pages from "./pages.js";
import * as queue from "./queue.js";
import * as trainings from "./trainings.js";

const VIEWS = { pages, queue, trainings, health };
const EVENT_TYPES = [
  "job.queued",
  "job.started",
  "job.progress",
  "job.succeeded",
  "job.failed",
  "job.cancelled",
  "job.interrupted",
  "training.progress",
  "training.checkpoint",
  "comfyui.up",
  "comfyui.down",
];
const ENDED = new Set(["job.succeeded", "job.failed", "job.cancelled", "job.interrupted"]);
const HEALTH_EVERY_MS = 15000; // ComfyUI can go away without a job noticing
const JOBS_EVERY_MS = 60000; // a safety net under the events

const state = {
  jobs: null, // GET /jobs, newest first
  pages: null, // GET /pages
  trainings: null, // GET /loras
  health: null, // GET /health
  errors: {}, // what could not be read, by name
  loss: new Map(), // training id -> [{step, loss}]
  samples: new Map(), // training id -> GET /loras/:id/samples
};

const loaders = {
  jobs: () => get("/jobs?limit=60"),
  pages: () => get("/pages"),
  trainings: () => get("/loras"),
  health: () => get("/health"),
};

// --- reading, at most one request per resource at a time --------------------------------------------

const inflight = {};
const dirty = {};
const timers = {};

function refresh(name) {
  if (inflight[name]) {
    dirty[name] = true; // read again when this one answers: it may predate the change
    return inflight[name];
  }
  inflight[name] = (async () => {
    do {
      dirty[name] = false;
      try {
        state[name] = await loaders[name]();
        delete state.errors[name];
      } catch (err) {
        state.errors[name] = err;
      }
    } while (dirty[name]);
    inflight[name] = null;
    render();
  })();
  return inflight[name];
}

// Many events in a burst (a chapter queued at once) make one read.
function soon(name, delay = 120) {
  clearTimeout(timers[name]);
  timers[name] = setTimeout(() => refresh(name), delay);
}

function refreshAll() {
  return Promise.all(Object.keys(loaders).map(refresh));
}

// --- telling the artist -------------------------------------------------------------------------------

function announce(text) {
  document.getElementById("alert").hidden = true;
  document.getElementById("announce").textContent = text;
}

function fail(text) {
  document.getElementById("announce").textContent = "";
  const alert = document.getElementById("alert");
  alert.textContent = text;
  alert.hidden = false;
}

// Run one action from a button: the button is busy meanwhile, the outcome is announced, and a
// refusal's message (the API's own, naming the field) is shown as it is.
async function act(button, run, { done, missing } = {}) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await run();
    if (done) announce(typeof done === "function" ? done(result) : done);
    return result;
  } catch (err) {
    fail(err.routeMissing && missing ? missing : err.message);
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

const ctx = { state, refresh, soon, announce, fail, act, render: () => render() };

// --- drawing ------------------------------------------------------------------------------------------

function render() {
  for (const [name, view] of Object.entries(VIEWS)) {
    view.render(document.getElementById(`${name}-body`), ctx);
  }
  renderStatus();
}

function renderStatus() {
  const up = state.health ? state.health.comfyui : null;
  const comfy = document.getElementById("status-comfyui");
  comfy.textContent = up === null ? "ComfyUI ?" : up ? "ComfyUI up" : "ComfyUI away";
  comfy.className = `pill ${up === false ? "bad" : up ? "good" : ""}`;
  const holder = state.health?.gpu?.heldBy;
  document.getElementById("status-gpu").textContent = holder ? `GPU: ${holder}` : "GPU free";
  const running = (state.jobs || []).find((j) => j.status === "running");
  const slot = document.getElementById("status-running");
  slot.replaceChildren();
  if (running) {
    const p = running.progress;
    slot.append(
      h("span", { text: `${running.id} ` }),
      h("span", { "data-step-for": running.id, text: p ? `${p.step}/${p.total}` : "starting" }),
    );
  }
}

// A job's progress, in place: every bar and counter that names the job, with no read at all.
function progress(event) {
  const job = (state.jobs || []).find((j) => j.id === event.job);
  if (job) job.progress = { step: event.step, total: event.total };
  for (const bar of document.querySelectorAll(`progress[data-progress-for="${CSS.escape(event.job)}"]`)) {
    bar.max = event.total;
    bar.value = event.step;
  }
  for (const text of document.querySelectorAll(`[data-step-for="${CSS.escape(event.job)}"]`)) {
    text.textContent = `${event.step}/${event.total}`;
  }
  if (event.kind === "train") trainings.progress(event, ctx);
}

function onEvent(event) {
  if (event.type === "job.progress") {
    progress(event);
    return;
  }
  if (event.type.startsWith("job.")) {
    soon("jobs");
    if (event.type === "job.started" || ENDED.has(event.type)) soon("health");
    if (event.kind === "generate" && ENDED.has(event.type)) soon("pages");
    if (event.kind === "train" || (event.kind === "generate" && ENDED.has(event.type))) {
      soon("trainings", 300); // a training's own state, or one of its samples
    }
  } else if (event.type.startsWith("comfyui.")) {
    soon("health", 0);
  } else if (event.type.startsWith("training.")) {
    soon("trainings", 300);
  }
}

function follow() {
  const connection = document.getElementById("status-connection");
  const source = new EventSource("/events");
  source.addEventListener("open", () => {
    connection.textContent = "live";
    connection.className = "pill good";
    refreshAll(); // what happened while the stream was down is read, not replayed
  });
  source.addEventListener("error", () => {
    connection.textContent = "reconnecting…";
    connection.className = "pill bad";
  });
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => onEvent(JSON.parse(message.data)));
  }
}

// --- views --------------------------------------------------------------------------------------------

function show() {
  const wanted = location.hash.slice(1);
  const name = wanted in VIEWS ? wanted : "pages";
  for (const view of Object.keys(VIEWS)) {
    document.getElementById(`view-${view}`).hidden = view !== name;
  }
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · Plasma review board`;
}

window.addEventListener("hashchange", show);
show();
render();
refreshAll();
follow();
setInterval(() => refresh("health"), HEALTH_EVERY_MS);
setInterval(() => refresh("jobs"), JOBS_EVERY_MS);
