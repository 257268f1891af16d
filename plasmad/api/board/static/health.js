// The health view: ComfyUI up or away, its device and flags, what holds the GPU, the last
// benchmark, and the warnings plasmad has (GET /health).

import { facts, fill, h, message, number, when } from "./dom.js";

export function render(root, ctx) {
  const { state } = ctx;
  const health = state.health;
  if (!health) {
    if (state.errors.health)
      message(root, `plasmad does not answer: ${state.errors.health.message}`, "error");
    return;
  }
  const info = health.comfyuiInfo || {};
  const devices = (info.devices || []).map((d) => `${d.name} (${d.type})`).join(", ");
  const process = info.process || {};
  fill(
    root,
    h(
      "section",
      { "aria-labelledby": "health-comfyui" },
      h("h3", { id: "health-comfyui", text: "ComfyUI" }),
      h("p", {
        class: `big ${health.comfyui ? "good" : "bad"}`,
        text: health.comfyui ? "ComfyUI is up" : "ComfyUI is away",
      }),
      facts([
        ["Address", info.url],
        ["Error", info.error],
        ["Version", info.version],
        ["PyTorch", info.pytorch],
        ["Device", devices || null],
        ["Apple GPU (mps)", health.comfyui ? (health.mps ? "yes" : "no") : null],
        ["VAE in fp32", info.fp32Vae === undefined ? null : info.fp32Vae ? "yes" : "no"],
        ["Managed by plasmad", process.managed ? `yes, pid ${process.pid ?? "?"}` : "no"],
      ]),
    ),
    h(
      "section",
      { "aria-labelledby": "health-work" },
      h("h3", { id: "health-work", text: "Work" }),
      facts([
        ["GPU held by", health.gpu?.heldBy || "nobody"],
        ["Running", health.queue?.running || "nothing"],
        ["Queued", health.queue?.queued],
        ["Taking new work", health.accepting === false ? "no: stopping" : "yes"],
      ]),
    ),
    h(
      "section",
      { "aria-labelledby": "health-bench" },
      h("h3", { id: "health-bench", text: "Last benchmark" }),
      bench(health.bench),
    ),
    h(
      "section",
      { "aria-labelledby": "health-warnings" },
      h("h3", { id: "health-warnings", text: "Warnings" }),
      health.warnings.length
        ? h(
            "ul",
            { class: "warnings" },
            health.warnings.map((w) => h("li", { text: w })),
          )
        : h("p", { class: "muted", text: "None." }),
    ),
  );
}

function bench(record) {
  if (!record) return h("p", { class: "muted", text: "None yet: plasmactl bench runs one." });
  const passed = record.passed === true ? "passed" : record.passed === false ? "failed" : "not judged";
  return facts([
    ["When", when(record.finishedAt || record.at || record.startedAt)],
    [
      "Size",
      record.width && record.height ? `${record.width}×${record.height}, ${record.steps} steps` : null,
    ],
    ["Seconds an image", record.secondsPerImage === undefined ? null : number(record.secondsPerImage, 1)],
    ["Iterations a second", record.itPerSec === undefined ? null : number(record.itPerSec, 2)],
    ["Against the 2-minute bar", passed],
    ["Note", record.note],
    ["Error", record.error?.message || (typeof record.error === "string" ? record.error : null)],
  ]);
}
