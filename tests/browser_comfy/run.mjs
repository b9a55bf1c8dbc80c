// Drive the real ComfyUI frontend in headless Debian chromium:
//   node run.mjs --url http://127.0.0.1:PORT --out DIR [--run demo_erase_and_probe] [--fast] [--timeout 900]
// 1. loads every workflow the pack serves as a template (/api/workflow_templates), checks that its nodes
//    rendered (no missing node types) and screenshots it;
// 2. runs one of them (--run) with app.queuePrompt, waits for the queue to drain, checks the slider widget on
//    the Before / After Compare node got its images, and screenshots the result.
// --fast shrinks the demo's training and sampling settings on the canvas before running (CI on 2 CPU cores).
// Prints one JSON line with the findings; exits non-zero on failure.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const next = process.argv[i + 1];
  return next === undefined || next.startsWith("--") ? true : next;
}

const url = String(arg("url", "http://127.0.0.1:8188")).replace(/\/$/, "");
const outDir = String(arg("out", "out/browser_comfy"));
const runName = arg("run", "");
const fast = Boolean(arg("fast", false));
const timeoutS = Number(arg("timeout", 900));
const pack = String(arg("pack", "robust-erasure"));
fs.mkdirSync(outDir, { recursive: true });

const result = { url, templates: [], loaded: {}, ran: null, errors: [], console_errors: [] };

async function api(p, init) {
  const r = await fetch(url + p, init);
  if (!r.ok) throw new Error(`${p}: HTTP ${r.status}`);
  return r.headers.get("content-type")?.includes("json") ? r.json() : r.text();
}

async function main() {
  // A fresh user directory shows a tutorial dialog over the canvas unless this is set.
  await api("/api/settings/Comfy.TutorialCompleted", { method: "POST", body: "true" });
  const templates = await api("/api/workflow_templates");
  const names = templates[pack] || [];
  result.templates = names;
  if (!names.length) throw new Error(`the server lists no templates for ${pack}: ${JSON.stringify(templates)}`);

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 2400, height: 1500 } });
    await context.addInitScript(() => { localStorage.setItem("vueNodesBannerDismissed", "true"); });
    const page = await context.newPage();
    page.on("console", (m) => { if (m.type() === "error") result.console_errors.push(m.text().slice(0, 300)); });
    page.on("pageerror", (e) => result.console_errors.push(String(e).slice(0, 300)));
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(() => window.app?.graph && window.app?.canvas, null, { timeout: 120000 });
    // our extensions registered?
    const extensions = await page.evaluate(() => (window.app.extensions || []).map((e) => e.name));
    result.extensions = extensions.filter((n) => n.startsWith("robust_erasure"));

    for (const name of names) {
      const workflow = await api(`/api/workflow_templates/${pack}/${name}.json`);
      const info = await page.evaluate(async (wf) => {
        await window.app.loadGraphData(wf);
        await new Promise((r) => setTimeout(r, 500));
        const nodes = window.app.graph._nodes || window.app.graph.nodes || [];
        return {
          count: nodes.length,
          types: nodes.map((n) => n.type),
          // A node type the frontend does not know becomes a bare LGraphNode placeholder.
          missing: nodes.filter((n) => n.constructor?.name === "LGraphNode" && !n.comfyClass).map((n) => n.type),
          // Nodes the frontend flags, except for a model file this server lacks (frontend 1.45 flags a
          // CheckpointLoaderSimple whose checkpoint is not installed, as the SD1.5 templates' is not in tests).
          flagged: nodes.filter((n) => n.has_errors && !(n.widgets || []).some((w) => {
            const values = typeof w.options?.values === "function" ? w.options.values() : w.options?.values;
            return w.type === "combo" && Array.isArray(values) && !values.includes(w.value);
          })).map((n) => n.type),
          slider: nodes.filter((n) => n.type === "RobustErasureCompare")
            .map((n) => Boolean(n.robustErasureCompare && (n.widgets || []).some((w) => w.name === "compare_slider"))),
          chart: nodes.filter((n) => n.type === "RobustErasureErase").map((n) => Boolean(n.robustErasureLossChart)),
        };
      }, workflow);
      info.expected = workflow.nodes.length;
      result.loaded[name] = info;
      if (info.count !== info.expected) result.errors.push(`${name}: ${info.count}/${info.expected} nodes rendered`);
      if (info.missing.length) result.errors.push(`${name}: missing node types ${info.missing}`);
      if (info.flagged.length) result.errors.push(`${name}: nodes flagged with errors ${info.flagged}`);
      await page.screenshot({ path: path.join(outDir, `${name}.png`) });
    }

    if (runName) {
      const workflow = await api(`/api/workflow_templates/${pack}/${runName}.json`);
      await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
      if (fast) {
        await page.evaluate(() => {
          const set = (node, name, value) => {
            const w = (node.widgets || []).find((x) => x.name === name);
            if (w) w.value = value;
          };
          for (const node of window.app.graph._nodes) {
            if (node.type === "RobustErasureErase") {
              set(node, "iterations", 3);
              set(node, "attack_steps", 1);
              set(node, "warmup_iterations", 1);
              set(node, "options", "num_ddim_steps=2, concept_pool_size=1, retain_pool_size=1, retain_batch=1");
            }
            if (node.type === "RobustErasureProbe") {
              set(node, "steps", 3);
              set(node, "options", "k=1, sampling_steps=2, trajectories=1, points=2");
              set(node, "generation_steps", 3);
            }
            if (node.type === "KSampler") set(node, "steps", 3);
          }
        });
      }
      const started = Date.now();
      await page.evaluate(() => window.app.queuePrompt(0, 1));
      // wait until the queue has taken the prompt and drained again
      await page.waitForTimeout(2000);
      const deadline = Date.now() + timeoutS * 1000;
      let history = null;
      for (;;) {
        const q = await api("/queue");
        if (!q.queue_running.length && !q.queue_pending.length) break;
        if (Date.now() > deadline) throw new Error(`${runName} did not finish in ${timeoutS} s`);
        await page.waitForTimeout(1000);
      }
      history = await api("/history?max_items=1");
      const entry = Object.values(history)[0];
      const status = entry?.status || {};
      const error = (status.messages || []).find(([kind]) => kind === "execution_error");
      await page.waitForTimeout(1500);
      const view = await page.evaluate(() => {
        const node = window.app.graph._nodes.find((n) => n.type === "RobustErasureCompare");
        const root = node?.robustErasureCompare?.root;
        const imgs = root ? [...root.querySelectorAll("img")] : [];
        return {
          slider: Boolean(root?.querySelector("input[type=range]")),
          images: imgs.map((i) => ({ src: i.getAttribute("src") || "", loaded: i.complete && i.naturalWidth > 0 })),
        };
      });
      result.ran = {
        name: runName, fast, seconds: Math.round((Date.now() - started) / 1000),
        status: status.status_str, error: error ? error[1].exception_message : null, compare: view,
      };
      if (status.status_str !== "success") result.errors.push(`${runName}: ${status.status_str} ${result.ran.error || ""}`);
      if (!view.slider || view.images.length !== 2 || !view.images.every((i) => i.loaded)) {
        result.errors.push(`${runName}: the compare slider did not show both images: ${JSON.stringify(view)}`);
      }
      // fit the whole graph into view for the screenshot
      await page.evaluate(() => {
        const c = window.app.canvas;
        c.ds.scale = 0.72;
        c.ds.offset = [40, 80];
        c.setDirty(true, true);
      });
      await page.waitForTimeout(500);
      await page.screenshot({ path: path.join(outDir, `${runName}.ran.png`) });
    }
  } finally {
    await browser.close();
  }
}

main()
  .catch((e) => result.errors.push(String(e?.stack || e).slice(0, 2000)))
  .finally(() => {
    fs.writeFileSync(path.join(outDir, "result.json"), JSON.stringify(result, null, 1));
    console.log(JSON.stringify(result));
    process.exit(result.errors.length ? 1 : 0);
  });
