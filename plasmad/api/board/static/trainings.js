// The trainings view: each training's live step, loss curve, speed and time left; its checkpoints
// (promote one) and their samples as a grid, checkpoint × prompt; the LoRAs ComfyUI can load.

import { enc, get, post } from "./api.js";
import { duration, facts, fill, h, message, number, progressBar, reconcile } from "./dom.js";
import { lossCurve } from "./curve.js";

const LIVE_EVERY_MS = 1500; // a running training's figures and curve, read at most this often
const ENDED = new Set(["succeeded", "failed", "cancelled", "interrupted"]);

// Fetched per training, beside GET /loras: its loss log and its samples.
const loading = new Set();
const loadedAs = new Map();
const lastLive = new Map();

function load(ctx, kind, id, version, path) {
  const name = `${kind}:${id}`;
  if (loadedAs.get(name) === version || loading.has(name)) return;
  loading.add(name);
  const target = kind === "loss" ? ctx.state.loss : ctx.state.samples;
  get(path)
    .then((data) => target.set(id, data))
    .catch((err) => target.set(id, { error: err.message }))
    .finally(() => {
      loading.delete(name);
      loadedAs.set(name, version);
      ctx.render();
    });
}

// A running training moved a step: its figures (GET /loras/:id/status, no ComfyUI call) and its
// curve, at most every LIVE_EVERY_MS.
export function progress(event, ctx) {
  const now = Date.now();
  if (now - (lastLive.get(event.job) || 0) < LIVE_EVERY_MS) return;
  lastLive.set(event.job, now);
  load(ctx, "loss", event.job, `live-${now}`, `/loras/${enc(event.job)}/loss`);
  get(`/loras/${enc(event.job)}/status`)
    .then((fresh) => {
      const list = ctx.state.trainings?.trainings || [];
      const i = list.findIndex((t) => t.id === fresh.id);
      if (i >= 0) list[i] = { ...fresh, logTail: undefined };
      ctx.render();
    })
    .catch(() => {}); // the next event or refresh tries again
}

export function render(root, ctx) {
  const { state } = ctx;
  if (state.errors.trainings && !state.trainings) {
    message(root, `The trainings cannot be read: ${state.errors.trainings.message}`, "error");
    return;
  }
  if (!state.trainings) return;
  if (!root.querySelector(".trainings")) {
    fill(
      root,
      h("div", { class: "trainings" }),
      h("section", { class: "loras", "aria-labelledby": "loras-title" }),
    );
  }
  const list = root.querySelector(".trainings");
  const { trainings } = state.trainings;
  if (!trainings.length) {
    message(list, "No training yet: plasmactl train DATASET --name NAME starts one.");
  } else {
    reconcile(list, trainings, {
      keyOf: (t) => t.id,
      build: (t) => trainingArticle(t),
      update: (el, t) => updateTraining(el, t, ctx),
    });
  }
  renderLoras(root.querySelector(".loras"), state.trainings);
}

function trainingArticle(t) {
  const id = `training-${t.id}`;
  return h(
    "article",
    { class: "training", "aria-labelledby": id },
    h("h3", { id }, h("span", { text: t.outputName }), " ", h("span", { class: "muted job-id", text: t.id })),
    h("div", { class: "figures" }),
    h("figure", { class: "curve" }),
    h("div", { class: "checkpoints" }),
    h("div", { class: "samples" }),
  );
}

function updateTraining(el, t, ctx) {
  el.className = `training ${t.status}`;
  const running = t.status === "running";
  const figures = el.querySelector(".figures");
  fill(
    figures,
    h(
      "p",
      { class: "progress-line" },
      h("span", { class: `status ${t.status}`, text: t.status }),
      " ",
      progressBar(t.id, t.step, t.total, `Training progress of ${t.outputName}`),
      " step ",
      h("span", { "data-step-for": t.id, text: `${t.step}/${t.total}` }),
    ),
    facts([
      ["Trainer", t.trainer],
      ["Loss", t.loss === null ? null : number(t.loss, 4)],
      ["Seconds a step", t.secPerStep === null ? null : number(t.secPerStep, 2)],
      ["Time left", running ? duration(t.etaSeconds) : null],
      ["Waiting for", t.waitingFor],
      ["Outcome", t.outcome],
      ["Why", t.reason],
      ["What to do", t.advice],
    ]),
    t.warnings.length
      ? h(
          "details",
          { class: "warnings" },
          h("summary", { text: `Warnings (${t.warnings.length})` }),
          h(
            "ul",
            {},
            t.warnings.map((w) => h("li", { text: w })),
          ),
        )
      : null,
  );
  if (!running || !ctx.state.loss.has(t.id)) {
    load(ctx, "loss", t.id, `${t.status}`, `/loras/${enc(t.id)}/loss`);
  }
  const curve = el.querySelector(".curve");
  const loss = ctx.state.loss.get(t.id);
  curve.replaceChildren(
    ...(loss?.error ? [h("p", { class: "error", text: loss.error })] : lossCurve(t, loss?.points || [])),
  );
  renderCheckpoints(el.querySelector(".checkpoints"), t, ctx);
  renderSamples(el.querySelector(".samples"), t, ctx);
}

function renderCheckpoints(box, t, ctx) {
  const kept = t.checkpoints.filter((c) => c.complete);
  if (!t.checkpoints.length) {
    box.replaceChildren(h("p", { class: "muted", text: "No checkpoint yet." }));
    return;
  }
  const rows = t.checkpoints.map((c) => {
    const label = c.step === null ? "final" : `step ${c.step}`;
    const promote = h("button", {
      type: "button",
      "data-focus": `promote-${c.file}`,
      "aria-label": `Promote ${label} of ${t.outputName}`,
      text: "Promote",
      disabled: !c.complete,
      onclick: () =>
        ctx
          .act(promote, () => post(`/loras/${enc(t.id)}/promote`, c.step === null ? {} : { step: c.step }), {
            done: (r) =>
              `${label} of ${t.outputName} promoted as ${r.loraId}` +
              (r.copied === false ? " (already there)" : ""),
          })
          .then(() => ctx.soon("trainings", 0)),
    });
    return h(
      "tr",
      {},
      h("th", { scope: "row", text: label }),
      h("td", { class: "path", text: c.file }),
      h("td", { text: `${number(c.bytes / 1e6, 1)} MB${c.complete ? "" : " (incomplete)"}` }),
      h("td", {}, promote),
    );
  });
  box.replaceChildren(
    h(
      "table",
      { class: "checkpoints" },
      h("caption", { text: `Checkpoints of ${t.outputName} (${kept.length} kept)` }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Checkpoint", "File", "Size", "Action"].map((c) => h("th", { scope: "col", text: c })),
        ),
      ),
      h("tbody", {}, rows),
    ),
  );
}

function renderSamples(box, t, ctx) {
  if (!t.samples) {
    const finished = ENDED.has(t.status) && t.checkpoints.some((c) => c.complete);
    if (!finished) {
      box.replaceChildren();
      return;
    }
    const draw = h("button", {
      type: "button",
      "data-focus": "draw-samples",
      "aria-label": `Draw samples of ${t.outputName}`,
      text: "Draw samples",
      onclick: () =>
        ctx
          .act(draw, () => post(`/loras/${enc(t.id)}/samples`, {}), {
            done: (s) => `${s.total} samples of ${t.outputName} queued`,
          })
          .then(() => ctx.soon("trainings", 0)),
    });
    box.replaceChildren(
      h(
        "p",
        {},
        draw,
        " ",
        h("span", { class: "muted", text: "the same prompts and seeds for every checkpoint" }),
      ),
    );
    return;
  }
  const version = `${t.samples.set}|${t.samples.sheet}|${jobsEnded(ctx, t.samples)}`;
  load(ctx, "samples", t.id, version, `/loras/${enc(t.id)}/samples`);
  const samples = ctx.state.samples.get(t.id);
  if (!samples) return;
  if (samples.error) {
    box.replaceChildren(h("p", { class: "error", text: samples.error }));
    return;
  }
  box.replaceChildren(sampleGrid(t, samples, ctx));
}

// How many of a sample set's jobs the board has seen end: a change reads the set again.
function jobsEnded(ctx, summary) {
  const jobs = ctx.state.jobs || [];
  return jobs.filter((j) => j.kind === "generate" && ENDED.has(j.status)).length + summary.jobs;
}

function sampleGrid(t, samples, ctx) {
  const failed = new Set(samples.failed.map((f) => f.job));
  const jobs = new Map((ctx.state.jobs || []).map((j) => [j.id, j]));
  const head = h(
    "tr",
    {},
    h("th", { scope: "col", text: "Checkpoint" }),
    samples.prompts.map((p, j) => h("th", { scope: "col", text: `seed ${samples.seeds[j]}: ${p}` })),
  );
  const rows = samples.rows.map((row) =>
    h(
      "tr",
      {},
      h("th", { scope: "row", text: row.label }),
      row.jobs.map((jobId, j) =>
        h("td", {}, sampleCell(jobId, `${row.label}, prompt ${j + 1}`, failed, jobs, samples)),
      ),
    ),
  );
  return h(
    "table",
    { class: "sample-grid" },
    h("caption", {
      text: `Samples of ${t.outputName}: checkpoints × prompts (${samples.done}/${samples.total} drawn)`,
    }),
    h("thead", {}, head),
    h("tbody", {}, rows),
  );
}

function sampleCell(jobId, label, failed, jobs, samples) {
  const job = jobs.get(jobId);
  const ok = job ? job.status === "succeeded" : samples.state === "done" && !failed.has(jobId);
  if (failed.has(jobId) || (job && ENDED.has(job.status) && !ok))
    return h("span", { class: "error", text: "failed" });
  if (!ok) return h("span", { class: "muted", text: job?.status === "running" ? "drawing…" : "waiting" });
  return h(
    "a",
    {
      href: `/jobs/${enc(jobId)}/image`,
      target: "_blank",
      rel: "noopener",
      "aria-label": `Open sample ${label}`,
    },
    h("img", { src: `/jobs/${enc(jobId)}/thumbnail?size=128`, alt: label, loading: "lazy" }),
  );
}

function renderLoras(section, data) {
  const own = data.loras.filter((l) => l.inFolder);
  fill(
    section,
    h("h3", { id: "loras-title", text: "LoRAs in ComfyUI" }),
    data.comfyuiError ? h("p", { class: "error", text: `ComfyUI's list: ${data.comfyuiError}` }) : null,
    own.length
      ? h(
          "ul",
          { class: "lora-list" },
          own.map((l) =>
            h(
              "li",
              {},
              l.name,
              l.comfyui === false
                ? h("span", { class: "muted", text: " (ComfyUI has not listed it yet)" })
                : null,
            ),
          ),
        )
      : h("p", { class: "muted", text: "None in its loras folder." }),
  );
}
