// Robust Erasure: a before/after slider on the "Before / After Compare" node.
// The node's Python side saves each before/after pair as temp PNGs and reports them under
// `robust_erasure_compare` in its UI output; this widget shows one pair at a time, the "after" image revealed
// from the left up to the slider, and arrows to step through the pairs.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_ID = "RobustErasureCompare";
const UI_KEY = "robust_erasure_compare";
const EXTENSION = "robust_erasure.compare_slider";

function viewUrl(ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "temp" });
  return api.apiURL(`/view?${q.toString()}`);
}

function buildWidgetElement() {
  const root = document.createElement("div");
  root.className = "robust-erasure-compare";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;min-height:120px;" +
    "font:11px sans-serif;color:var(--input-text,#ddd)";
  const stage = document.createElement("div");
  stage.style.cssText = "position:relative;flex:1;min-height:96px;overflow:hidden;background:#111;border-radius:4px";
  const before = document.createElement("img");
  const after = document.createElement("img");
  for (const img of [before, after]) {
    img.style.cssText = "position:absolute;inset:0;width:100%;height:100%;object-fit:contain;image-rendering:pixelated";
    img.draggable = false;
  }
  before.dataset.role = "before";
  after.dataset.role = "after";
  const divider = document.createElement("div");
  divider.style.cssText = "position:absolute;top:0;bottom:0;width:2px;background:#fff;box-shadow:0 0 3px #000;pointer-events:none";
  const labels = document.createElement("div");
  labels.style.cssText = "position:absolute;top:2px;left:4px;right:4px;display:flex;justify-content:space-between;" +
    "pointer-events:none;text-shadow:0 0 3px #000;color:#fff";
  const labelBefore = document.createElement("span");
  const labelAfter = document.createElement("span");
  labels.append(labelBefore, labelAfter);
  stage.append(before, after, divider, labels);

  const controls = document.createElement("div");
  controls.style.cssText = "display:flex;align-items:center;gap:4px";
  const prev = document.createElement("button");
  const next = document.createElement("button");
  prev.textContent = "<";
  next.textContent = ">";
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = "0";
  slider.max = "100";
  slider.value = "50";
  slider.className = "robust-erasure-compare-slider";
  slider.style.cssText = "flex:1";
  const counter = document.createElement("span");
  controls.append(prev, slider, next, counter);
  root.append(stage, controls);

  const state = { pairs: [], index: 0 };
  const setSplit = () => {
    const v = Number(slider.value);
    // the "before" image shows left of the divider, the "after" image right of it
    after.style.clipPath = `inset(0 0 0 ${v}%)`;
    divider.style.left = `calc(${v}% - 1px)`;
  };
  const show = () => {
    const pair = state.pairs[state.index];
    counter.textContent = state.pairs.length ? `${state.index + 1}/${state.pairs.length}` : "run the workflow";
    if (!pair) {
      before.removeAttribute("src");
      after.removeAttribute("src");
      labelBefore.textContent = "";
      labelAfter.textContent = "";
      return;
    }
    before.src = viewUrl(pair.before);
    after.src = viewUrl(pair.after);
    labelBefore.textContent = pair.label_before ?? "before";
    labelAfter.textContent = pair.label_after ?? "after";
  };
  slider.addEventListener("input", setSplit);
  // moving the pointer over the images moves the divider too
  stage.addEventListener("pointermove", (e) => {
    const r = stage.getBoundingClientRect();
    if (r.width > 0 && e.buttons === 1) {
      slider.value = String(Math.round(((e.clientX - r.left) / r.width) * 100));
      setSplit();
    }
  });
  prev.addEventListener("click", () => {
    if (state.pairs.length) { state.index = (state.index + state.pairs.length - 1) % state.pairs.length; show(); }
  });
  next.addEventListener("click", () => {
    if (state.pairs.length) { state.index = (state.index + 1) % state.pairs.length; show(); }
  });
  setSplit();
  show();
  return {
    root,
    setPairs(pairs) {
      state.pairs = Array.isArray(pairs) ? pairs : [];
      state.index = 0;
      show();
    },
  };
}

if (!window.__robustErasureCompareSlider) {
  window.__robustErasureCompareSlider = true;
  app.registerExtension({
    name: EXTENSION,
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name !== NODE_ID) return;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        const view = buildWidgetElement();
        this.robustErasureCompare = view;
        const widget = this.addDOMWidget("compare_slider", "robust_erasure_compare_slider", view.root, {
          serialize: false,
          hideOnZoom: false,
          getMinHeight: () => 160,
        });
        widget.serializeValue = () => undefined;
        this.setSize([Math.max(this.size[0], 300), Math.max(this.size[1], 300)]);
        return r;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        if (message && message[UI_KEY]) this.robustErasureCompare?.setPairs(message[UI_KEY]);
      };
    },
  });
}
