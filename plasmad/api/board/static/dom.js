// Small DOM helpers: build elements, update keyed lists in place, format figures for people.

// h("button", {class: "x", onclick: fn, "aria-label": "…"}, "text", child…)
export function h(tag, props = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "text") {
      el.textContent = value;
    } else if (name === "value" && !svg) {
      el.value = value;
    } else {
      el.setAttribute(name === "className" ? "class" : name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replace `old` by `fresh`, keeping what the person was doing: the focused control and the open
// <details>, matched by their data-focus names.
function swap(old, fresh) {
  const active = old.contains(document.activeElement) ? document.activeElement.dataset.focus : null;
  const open = [...old.querySelectorAll("details[open][data-focus]")].map((d) => d.dataset.focus);
  old.replaceWith(fresh);
  for (const name of open) {
    const details = fresh.querySelector(`details[data-focus="${CSS.escape(name)}"]`);
    if (details) details.open = true;
  }
  if (active) fresh.querySelector(`[data-focus="${CSS.escape(active)}"]`)?.focus();
}

// Make `parent`'s children one element per item, in order, keyed by keyOf(item). An element whose
// signature (sigOf) is unchanged is kept as it is; a changed one is rebuilt, or updated in place
// when `update` is given (for elements that hold keyed lists of their own).
export function reconcile(parent, items, { keyOf, sigOf = JSON.stringify, build, update }) {
  const existing = new Map();
  for (const child of [...parent.children]) {
    if (child.dataset.key !== undefined) existing.set(child.dataset.key, child);
    else child.remove();
  }
  const wanted = items.map((item) => {
    const key = String(keyOf(item));
    let el = existing.get(key);
    existing.delete(key);
    if (update) {
      if (!el) {
        el = build(item);
        el.dataset.key = key;
      }
      update(el, item);
      return el;
    }
    const sig = sigOf(item);
    if (!el || el.dataset.sig !== sig) {
      const fresh = build(item);
      fresh.dataset.key = key;
      fresh.dataset.sig = sig;
      if (el) swap(el, fresh);
      el = fresh;
    }
    return el;
  });
  for (const el of existing.values()) el.remove();
  wanted.forEach((el, i) => {
    if (parent.children[i] !== el) parent.insertBefore(el, parent.children[i] || null);
  });
}

// Replace an element's children; absent ones (null, false) are left out, not written as text.
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

// Replace a container's content with one message (a loading note, an error).
export function message(parent, text, kind = "muted") {
  parent.replaceChildren(h("p", { class: kind, role: kind === "error" ? "alert" : null }, text));
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function number(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  const text = Number(value).toFixed(digits);
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

// A <dl> of [term, value] pairs, the absent ones left out.
export function facts(pairs, className = "facts") {
  const dl = h("dl", { class: className });
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(h("div", {}, h("dt", { text: term }), h("dd", {}, value)));
  }
  return dl;
}

// A progress bar named after what it measures; board.js moves it on each job.progress event.
export function progressBar(jobId, step, total, label) {
  return h("progress", {
    "data-progress-for": jobId,
    max: total || 1,
    value: total ? step || 0 : null,
    "aria-label": label,
  });
}
