// A loss curve as SVG, and its caption: the trainer's running average at each step, with its range
// and the steps on the axes. Built in the DOM, so the page's Content-Security-Policy allows it.

import { h, number } from "./dom.js";

const W = 480;
const H = 160;
const PAD = { left: 48, right: 10, top: 10, bottom: 24 };

export function lossCurve(training, points) {
  if (!points.length) {
    const why = training.trainer === "comfyui" ? " (ComfyUI's trainer reports no loss)" : "";
    return [h("p", { class: "muted", text: `No loss recorded yet${why}.` })];
  }
  const last = points[points.length - 1];
  const lastLoss = number(last.loss, 4);
  const name = `Loss curve of ${training.outputName}: ${points.length} steps, last loss ${lastLoss}`;
  const losses = points.map((p) => p.loss);
  let lo = Math.min(...losses);
  let hi = Math.max(...losses);
  if (hi === lo) {
    const spread = Math.abs(lo) * 0.1 || 1;
    lo -= spread;
    hi += spread;
  }
  const firstStep = Math.min(points[0].step, 1);
  const lastStep = Math.max(training.total || 0, last.step);
  const x = (step) =>
    PAD.left + ((step - firstStep) / (lastStep - firstStep || 1)) * (W - PAD.left - PAD.right);
  const y = (loss) => PAD.top + ((hi - loss) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  const line = points.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" ");
  const svg = h(
    "svg:svg",
    {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "aria-label": name,
      "data-points": points.length,
      class: "loss-curve",
    },
    h("svg:title", { text: name }),
    h("svg:line", { class: "axis", x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom }),
    h("svg:line", { class: "axis", x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom }),
    h("svg:text", {
      class: "tick",
      x: PAD.left - 4,
      y: PAD.top + 8,
      "text-anchor": "end",
      text: number(hi, 3),
    }),
    h("svg:text", {
      class: "tick",
      x: PAD.left - 4,
      y: H - PAD.bottom,
      "text-anchor": "end",
      text: number(lo, 3),
    }),
    h("svg:text", { class: "tick", x: PAD.left, y: H - 6, text: `step ${firstStep}` }),
    h("svg:text", {
      class: "tick",
      x: W - PAD.right,
      y: H - 6,
      "text-anchor": "end",
      text: `step ${lastStep}`,
    }),
    h("svg:polyline", { class: "loss", points: line }),
    h("svg:circle", { class: "loss-last", cx: x(last.step), cy: y(last.loss), r: 3 }),
  );
  return [svg, h("figcaption", { text: name })];
}
