// Robust Erasure: a live loss chart on the "Robust Erase (AdvUnlearn)" node.
// The Python node sends `robust_erasure.loss` events ({node, step, total, unlearn_loss, retain_loss,
// attack_loss, adversarial}) after every training iteration; this widget plots them as they arrive.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_ID = "RobustErasureErase";
const EVENT = "robust_erasure.loss";
const SERIES = [
  ["unlearn_loss", "unlearn", "#e4572e"],
  ["retain_loss", "retain", "#29a3e0"],
  ["attack_loss", "attack", "#f3a712"],
];

function makeChart() {
  const root = document.createElement("div");
  root.className = "robust-erasure-loss-chart";
  root.style.cssText = "width:100%;height:100%;min-height:110px;display:flex;flex-direction:column;" +
    "font:10px sans-serif;color:var(--input-text,#ddd)";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "flex:1;width:100%;min-height:90px;background:#1b1b1b;border-radius:4px";
  const status = document.createElement("div");
  status.textContent = "loss: waiting for a run";
  root.append(canvas, status);
  const data = { points: [], total: 0 };

  function draw() {
    const w = (canvas.width = Math.max(50, canvas.clientWidth || 280));
    const h = (canvas.height = Math.max(50, canvas.clientHeight || 100));
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const pts = data.points;
    if (!pts.length) return;
    const total = Math.max(data.total, pts[pts.length - 1].step, 1);
    const values = pts.flatMap((p) => SERIES.map(([k]) => p[k]).filter((v) => Number.isFinite(v) && v > 0));
    if (!values.length) return;
    // log scale: the losses span orders of magnitude
    const lo = Math.log10(Math.min(...values)), hi = Math.log10(Math.max(...values));
    const span = Math.max(hi - lo, 1e-6);
    const x = (s) => 4 + ((w - 8) * s) / total;
    const y = (v) => h - 4 - ((h - 16) * (Math.log10(v) - lo)) / span;
    SERIES.forEach(([key, label, colour], i) => {
      ctx.strokeStyle = colour;
      ctx.lineWidth = 1.2;
      ctx.beginPath();
      let started = false;
      for (const p of pts) {
        const v = p[key];
        if (!Number.isFinite(v) || v <= 0) continue;
        if (!started) { ctx.moveTo(x(p.step), y(v)); started = true; } else ctx.lineTo(x(p.step), y(v));
      }
      ctx.stroke();
      ctx.fillStyle = colour;
      ctx.fillText(label, 6 + i * 52, 10);
    });
  }

  return {
    root,
    reset() { data.points = []; data.total = 0; draw(); },
    add(msg) {
      if (msg.step <= 1 || (data.points.length && msg.step <= data.points[data.points.length - 1].step)) data.points = [];
      data.points.push(msg);
      data.total = msg.total;
      const last = msg;
      const fmt = (v) => (Number.isFinite(v) ? v.toExponential(2) : "-");
      status.textContent = `iteration ${last.step}/${last.total}${last.adversarial ? " (adversarial)" : ""}: ` +
        `unlearn ${fmt(last.unlearn_loss)}, retain ${fmt(last.retain_loss)}, attack ${fmt(last.attack_loss)}`;
      draw();
    },
    count: () => data.points.length,
  };
}

if (!window.__robustErasureLossChart) {
  window.__robustErasureLossChart = true;
  api.addEventListener(EVENT, (event) => {
    const msg = event.detail || {};
    // the server names the node by its id in the queued graph, which is the canvas node's id
    const node = app.graph?.getNodeById?.(Number(msg.node)) ?? app.graph?.getNodeById?.(msg.node);
    node?.robustErasureLossChart?.add(msg);
  });
  app.registerExtension({
    name: "robust_erasure.loss_chart",
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name !== NODE_ID) return;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        const chart = makeChart();
        this.robustErasureLossChart = chart;
        this.addDOMWidget("loss_chart", "robust_erasure_loss_chart", chart.root, {
          serialize: false,
          getMinHeight: () => 130,
        });
        return r;
      };
    },
  });
}
