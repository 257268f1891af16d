// The pages view: per chapter, per page, its versions side by side, with what made each one and
// what the artist can do with it (approve, re-roll, vary, reproduce, open the image or workflow).

import { enc, post } from "./api.js";
import { facts, h, message, number, progressBar, reconcile } from "./dom.js";

const THUMB = 256;

export function render(root, ctx) {
  const { state } = ctx;
  if (state.errors.pages && !state.pages) {
    message(root, `The pages cannot be read: ${state.errors.pages.message}`, "error");
    return;
  }
  if (!state.pages) return;
  const chapters = state.pages.chapters;
  if (!chapters.length) {
    message(
      root,
      "No generated pages yet: generate one (plasmactl generate -c 1 --page 1) and it appears here.",
    );
    return;
  }
  reconcile(root, chapters, {
    keyOf: (c) => c.name,
    build: (c) => chapterSection(c),
    update: (el, c) => updateChapter(el, c, ctx),
  });
}

function chapterSection(chapter) {
  const id = `chapter-${chapter.name}`;
  return h(
    "section",
    { class: "chapter", "aria-labelledby": id },
    h("h3", { id, text: `Chapter ${chapter.chapter}` }),
    h("p", { class: "error chapter-error", hidden: true }),
    h("div", { class: "pages" }),
  );
}

function updateChapter(el, chapter, ctx) {
  const error = el.querySelector(".chapter-error");
  error.hidden = !chapter.error;
  error.textContent = chapter.error ? `Its generation log cannot be read: ${chapter.error}` : "";
  const pending = pendingJobs(ctx.state.jobs || []);
  reconcile(el.querySelector(".pages"), chapter.pages, {
    keyOf: (p) => p.name,
    build: (p) => pageSection(p),
    update: (pageEl, p) => updatePage(pageEl, p, pending.get(p.name) || [], ctx),
  });
}

// Jobs queued or running for a page, by page name: a re-roll shows up before its image does.
function pendingJobs(jobs) {
  const byPage = new Map();
  for (const job of jobs) {
    const { chapter, page } = job.request || {};
    if (job.kind !== "generate" || !chapter || !page) continue;
    if (job.status !== "queued" && job.status !== "running") continue;
    const name = `ch${String(chapter).padStart(2, "0")}_p${String(page).padStart(3, "0")}`;
    if (!byPage.has(name)) byPage.set(name, []);
    byPage.get(name).push(job);
  }
  return byPage;
}

function pageSection(page) {
  const id = `page-${page.name}`;
  return h(
    "section",
    { class: "page", "aria-labelledby": id },
    h("header", {}, h("h4", { id, text: page.name }), h("span", { class: "page-meta muted" })),
    h("ul", { class: "pending", "aria-label": `Jobs for ${page.name}` }),
    h("div", { class: "versions" }),
  );
}

function updatePage(el, page, pending, ctx) {
  const count = `${page.versions.length} version${page.versions.length === 1 ? "" : "s"}`;
  el.querySelector(".page-meta").textContent = page.approved.length
    ? `${count} · approved: ${page.approved.join(", ")}`
    : count;
  const list = el.querySelector(".pending");
  list.hidden = !pending.length;
  reconcile(list, pending, {
    keyOf: (j) => j.id,
    sigOf: (j) => `${j.status}|${j.waitingFor}`,
    build: (j) => pendingItem(j),
  });
  reconcile(el.querySelector(".versions"), page.versions, {
    keyOf: (v) => v.name,
    build: (v) => versionCard(v, ctx),
  });
}

function pendingItem(job) {
  const p = job.progress;
  if (job.status === "queued") {
    return h("li", { class: "muted" }, `${job.id} queued: waits for ${job.waitingFor || "the worker"}`);
  }
  return h(
    "li",
    {},
    `${job.id} running `,
    progressBar(job.id, p?.step, p?.total, `Progress of ${job.id}`),
    " ",
    h("span", { "data-step-for": job.id, text: p ? `${p.step}/${p.total}` : "starting" }),
  );
}

function settings(v) {
  const lora = v.loraId ? `${v.loraId} @ ${number(v.loraStrength)}` : v.generationBackend ? "none" : null;
  return facts([
    ["Seed", v.seed],
    ["LoRA", lora],
    ["ControlNet", v.controlnetStrength === null ? null : number(v.controlnetStrength)],
    ["Steps", v.steps],
    ["Sampler", v.sampler ? `${v.sampler}${v.scheduler ? ` / ${v.scheduler}` : ""}` : null],
    ["CFG", v.cfg === null ? null : number(v.cfg, 1)],
    ["Model", v.model],
    ["Fingerprint", v.modelFingerprint],
    ["Size", v.width && v.height ? `${v.width}×${v.height}` : null],
  ]);
}

function versionCard(v, ctx) {
  const id = `version-${v.name}`;
  const image = `/images/${enc(v.name)}`;
  const picture = v.hasImage
    ? h(
        "a",
        {
          class: "thumb",
          href: image,
          target: "_blank",
          rel: "noopener",
          "aria-label": `Open image ${v.name}`,
        },
        h("img", {
          src: `${image}/thumbnail?size=${THUMB}`,
          alt: v.name,
          loading: "lazy",
          decoding: "async",
        }),
      )
    : h("div", { class: "thumb missing", text: "image missing" });
  return h(
    "article",
    { class: `version${v.approved ? " approved" : ""}`, "aria-labelledby": id },
    h(
      "header",
      {},
      h("h5", { id, text: v.name }),
      v.approved ? h("span", { class: "badge", text: "Approved" }) : null,
    ),
    picture,
    settings(v),
    actions(v, ctx),
    varyForm(v, ctx),
  );
}

function actions(v, ctx) {
  const approve = h("button", {
    type: "button",
    "data-focus": "approve",
    text: v.approved ? "Unapprove" : "Approve",
    "aria-label": `${v.approved ? "Unapprove" : "Approve"} ${v.name}`,
    onclick: () =>
      ctx.act(
        approve,
        () => post(`/images/${enc(v.name)}/approve`, { approved: !v.approved }).then(done(ctx)),
        {
          done: `${v.name} ${v.approved ? "unapproved" : "approved"}`,
        },
      ),
  });
  const reroll = h("button", {
    type: "button",
    "data-focus": "reroll",
    text: "Re-roll",
    "aria-label": `Re-roll ${v.name}`,
    title: "The same settings with a new seed",
    onclick: () =>
      ctx.act(reroll, () => post(`/images/${enc(v.name)}/reroll`).then(queued(ctx)), {
        done: (job) => `Re-roll of ${v.name} queued as ${job.id}`,
      }),
  });
  const reproduce = h("button", {
    type: "button",
    "data-focus": "reproduce",
    text: "Reproduce",
    "aria-label": `Reproduce ${v.name}`,
    title: "Run its workflow again and compare",
    onclick: () =>
      ctx.act(reproduce, () => post(`/images/${enc(v.name)}/reproduce`).then(queued(ctx)), {
        done: (job) => `Reproduction of ${v.name} queued${job && job.id ? ` as ${job.id}` : ""}`,
        missing: "This plasmad cannot reproduce a version yet (its API has no reproduce).",
      }),
  });
  const canRemake = v.hasWorkflow && v.workflowTemplate;
  return h(
    "div",
    { class: "actions" },
    approve,
    canRemake ? reroll : null,
    canRemake ? reproduce : null,
    v.hasWorkflow
      ? h("a", {
          href: `/images/${enc(v.name)}/workflow`,
          target: "_blank",
          rel: "noopener",
          "aria-label": `Workflow JSON of ${v.name}`,
          text: "Workflow JSON",
        })
      : null,
  );
}

// Vary: the same seed, another LoRA or ControlNet strength (only those this version used).
function varyForm(v, ctx) {
  if (!v.hasWorkflow || !v.workflowTemplate) return null;
  const fields = [];
  if (v.loraId) {
    fields.push(strengthField("LoRA strength", "loraStrength", v.loraStrength, -2, 2));
  }
  if (v.controlnetStrength !== null) {
    fields.push(strengthField("ControlNet strength", "controlnetStrength", v.controlnetStrength, 0.4, 0.9));
  }
  if (!fields.length) return null;
  const button = h("button", {
    type: "submit",
    "data-focus": "vary",
    "aria-label": `Vary ${v.name}`,
    text: "Vary",
  });
  const form = h(
    "form",
    {
      class: "vary",
      "aria-label": `Vary ${v.name}`,
      onsubmit: (event) => {
        event.preventDefault();
        const body = {};
        for (const input of form.querySelectorAll("input")) {
          const value = input.valueAsNumber;
          if (!Number.isNaN(value) && value !== Number(input.dataset.was)) body[input.name] = value;
        }
        if (!Object.keys(body).length) {
          ctx.fail("Change the LoRA or ControlNet strength first: the same settings make the same picture.");
          return;
        }
        ctx.act(button, () => post(`/images/${enc(v.name)}/vary`, body).then(queued(ctx)), {
          done: (job) => `Variation of ${v.name} queued as ${job.id}`,
        });
      },
    },
    ...fields,
    button,
  );
  const summary = h("summary", { text: "Vary…" });
  return h("details", { class: "vary", "data-focus": "vary-details" }, summary, form);
}

function strengthField(label, name, value, min, max) {
  return h(
    "label",
    {},
    `${label} `,
    h("input", {
      type: "number",
      name,
      step: "0.05",
      min,
      max,
      value: value ?? "",
      "data-was": value ?? "",
      "data-focus": name,
    }),
  );
}

const done = (ctx) => (result) => {
  ctx.soon("pages", 0);
  return result;
};

const queued = (ctx) => (job) => {
  ctx.soon("jobs", 0);
  return job;
};
