// The queue view: what runs and how far it is, what waits and why, what ended; cancel and retry.

import { enc, post } from "./api.js";
import { h, message, progressBar, reconcile, when } from "./dom.js";

const RECENT = 20;
const GROUPS = [
  ["running", "Running", (j) => j.status === "running"],
  ["waiting", "Waiting", (j) => j.status === "queued"],
  ["recent", "Recently ended", (j) => j.status !== "running" && j.status !== "queued"],
];

export function render(root, ctx) {
  const { state } = ctx;
  if (state.errors.jobs && !state.jobs) {
    message(root, `The queue cannot be read: ${state.errors.jobs.message}`, "error");
    return;
  }
  if (!state.jobs) return;
  if (!root.querySelector(".queue-groups")) {
    root.replaceChildren(
      h("p", { class: "banner", "data-key": "banner", hidden: true }),
      h("div", { class: "queue-groups" }),
    );
  }
  const banner = root.querySelector(".banner");
  const comfyDown = state.health && state.health.comfyui === false;
  banner.hidden = !comfyDown;
  banner.textContent = comfyDown
    ? `ComfyUI is away (${state.health.comfyuiInfo?.error || "it does not answer"}): ` +
      "generations cannot run until it is back."
    : "";
  const groups = GROUPS.map(([key, title, wanted]) => {
    const jobs = state.jobs.filter(wanted);
    return { key, title, jobs: key === "recent" ? jobs.slice(0, RECENT) : jobs };
  });
  reconcile(root.querySelector(".queue-groups"), groups, {
    keyOf: (g) => g.key,
    build: (g) => groupSection(g),
    update: (el, g) => updateGroup(el, g, ctx),
  });
}

function groupSection(group) {
  const id = `queue-${group.key}`;
  return h(
    "section",
    { class: `queue-group ${group.key}`, "aria-labelledby": id },
    h("h3", { id, text: group.title }),
    h("p", { class: "muted empty", text: "None." }),
    h("ul", { class: "jobs" }),
  );
}

function updateGroup(el, group, ctx) {
  el.querySelector(".empty").hidden = group.jobs.length > 0;
  reconcile(el.querySelector(".jobs"), group.jobs, {
    keyOf: (j) => j.id,
    sigOf: (j) => JSON.stringify([j.status, j.waitingFor, j.error, j.outputs, j.finishedAt]),
    build: (j) => jobItem(j, ctx),
  });
}

// What a job is, in a few words: a page's name, a prompt's start, a training's name.
export function describe(job) {
  const r = job.request || {};
  if (job.kind === "train") return `training ${r.outputName || ""}`.trim();
  if (r.chapter && r.page) {
    const page = `ch${String(r.chapter).padStart(2, "0")}_p${String(r.page).padStart(3, "0")}`;
    return `${page}, seed ${job.seed ?? "?"}`;
  }
  const prompt = String(r.prompt || "");
  return prompt.length > 60 ? `“${prompt.slice(0, 60)}…”` : `“${prompt}”`;
}

function jobItem(job, ctx) {
  const id = `job-${job.id}`;
  const p = job.progress;
  const body = [];
  if (job.status === "running") {
    body.push(
      h(
        "p",
        {},
        progressBar(job.id, p?.step, p?.total, `Progress of ${job.id}`),
        " ",
        h("span", { "data-step-for": job.id, text: p ? `${p.step}/${p.total}` : "starting" }),
      ),
    );
  } else if (job.status === "queued") {
    body.push(h("p", { class: "waiting", text: `Waits for ${job.waitingFor || "the worker"}` }));
  } else {
    body.push(h("p", { class: `ended ${job.status}`, text: `${job.status} ${when(job.finishedAt)}` }));
    if (job.error) body.push(h("p", { class: "error", text: job.error.message }));
    for (const output of job.outputs || []) body.push(h("p", { class: "muted path", text: output }));
  }
  return h(
    "li",
    {},
    h(
      "article",
      { class: `job ${job.status}`, "aria-labelledby": id },
      h("h4", { id }, h("span", { class: "job-id", text: job.id }), " ", h("span", { text: describe(job) })),
      ...body,
      h("div", { class: "actions" }, jobButton(job, ctx)),
    ),
  );
}

function jobButton(job, ctx) {
  if (job.status === "queued" || job.status === "running") {
    const cancel = h("button", {
      type: "button",
      "data-focus": "cancel",
      text: "Cancel",
      "aria-label": `Cancel ${job.id}`,
      onclick: () =>
        ctx.act(cancel, () => post(`/jobs/${enc(job.id)}/cancel`).then(() => ctx.soon("jobs", 0)), {
          done: `${job.id} cancelled`,
        }),
    });
    return cancel;
  }
  if (job.status === "failed" || job.status === "cancelled" || job.status === "interrupted") {
    const retry = h("button", {
      type: "button",
      "data-focus": "retry",
      text: "Retry",
      "aria-label": `Retry ${job.id}`,
      onclick: () =>
        ctx.act(retry, () => post(`/jobs/${enc(job.id)}/retry`).then(() => ctx.soon("jobs", 0)), {
          done: `${job.id} queued again`,
          missing: "This plasmad cannot retry a job yet (its API has no retry): submit it again.",
        }),
    });
    return retry;
  }
  return null;
}
