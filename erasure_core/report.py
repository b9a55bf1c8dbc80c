"""Write an evaluation (from `evaluate.evaluate` or `sharding.merge_shards`) as a self-contained folder:

    report.json     every number (ASR with counts, utility, per-case seeds, adversarial prompts, losses, judge
                    details) and the relative path of every image
    report.html     an ASR table; before/after grids (original vs erased encoders, plain vs attacked) for every
                    concept case and retain prompt; loss curves
    images/         one PNG per generated image;  plots/  one loss-curve PNG per encoder and probe

All links are relative, so the folder can be moved or zipped; every file is written atomically.
"""

from __future__ import annotations

import html
from pathlib import Path

from .errors import ErasureError
from .files import atomic_write_json, atomic_write_text, safe_name, save_png
from .plots import line_plot, steps_series, training_series
from .rates import by_prompt_text, wilson_interval


def _loss_plots(results: dict, out_dir: Path) -> dict[str, str]:
    """One PNG per (encoder, probe) with the loss curve of every attacked case; {key: relative path}."""
    plots = {}
    for enc_name, entry in results["encoders"].items():
        for probe in results["probes"]:
            curves = [(c["index"], c["probes"].get(probe["name"], {}).get("losses") or []) for c in entry["cases"]]
            series = steps_series({f"case {i}": losses for i, losses in curves if losses})
            if not series:
                continue
            rel = f"plots/loss_{safe_name(enc_name)}_{safe_name(probe['name'])}.png"
            # The concept-vector probe records one distance per strength it tried, not optimisation steps.
            xlabel = "strength tried" if probe["name"] == "concept_vector" else "step"
            line_plot(out_dir / rel, series, title=f"{probe['name']} on {enc_name}", xlabel=xlabel,
                      ylabel="probe loss")
            plots[f"{enc_name}/{probe['name']}"] = rel
    return plots


def _training_plots(results: dict, out_dir: Path) -> dict[str, str]:
    """One PNG per trained encoder with its per-iteration losses (when the results carry training histories,
    as the demo's do); {method: relative path}."""
    plots = {}
    for method, run in (results.get("training") or {}).items():
        series = training_series(run.get("history") or [])
        if not series:
            continue
        rel = f"plots/training_{safe_name(method)}.png"
        line_plot(out_dir / rel, series, title=f"training: {method}", xlabel="iteration", ylabel="loss (MSE)",
                  yscale="log")
        plots[method] = rel
    return plots


def _curve_plot(results: dict, out_dir: Path) -> str | None:
    """ASR against the soft-prompt budget, one line per encoder; the unbounded point drawn one step past the
    largest budget. Returns the relative path, or None when the results have no curve of 2+ points."""
    curves = {name: e.get("robustness_curve") or [] for name, e in results["encoders"].items()}
    if not any(len(c) > 1 for c in curves.values()):
        return None
    bounded = sorted({p["epsilon"] for c in curves.values() for p in c if p["epsilon"] is not None})
    unbounded_x = 2 * bounded[-1] if bounded[-1] > 0 else 1.0
    xticks = {eps: f"{eps:g}" for eps in bounded}
    series = {}
    for name, curve in curves.items():
        points = [(unbounded_x if p["epsilon"] is None else p["epsilon"], p["rate"]) for p in curve
                  if p["rate"] is not None]
        if any(p["epsilon"] is None for p in curve):
            xticks[unbounded_x] = "unb."
        if points:
            series[name] = points
    rel = "plots/robustness_curve.png"
    line_plot(out_dir / rel, series, title="soft-prompt ASR against its budget",
              xlabel="epsilon (x median token norm)", ylabel="ASR", markers=True, xticks=xticks)
    return rel


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _count(r: dict | None) -> str:
    if not r:
        return "–"
    pct = "–" if r["rate"] is None else f"{100 * r['rate']:.1f}%"
    return f"{pct} <small>({r['successes']}/{r['n']})</small>"


def _probes_with_role(results: dict, role: str) -> list[str]:
    return [p["name"] for p in results["probes"] if p.get("role", "headline") == role]


def _asr_table(results: dict) -> str:
    probes = _probes_with_role(results, "headline")
    stress = _probes_with_role(results, "stress")
    head = "".join(f"<th>post-attack ASR<br>{_e(p)}</th>" for p in probes)
    head += "".join(f"<th class='stress'>stress ASR<br>{_e(p)}</th>" for p in stress)
    rows = []
    for name, entry in results["encoders"].items():
        util = entry["utility"]
        dist = "–" if util["mean_pixel_distance"] is None else f"{util['mean_pixel_distance']:.4f}"
        post = {**entry["post_attack"], **entry.get("stress_attack", {})}
        cells = "".join(f"<td>{_count(post[p])}{_interval(post[p])}</td>" for p in probes + stress)
        rows.append(f"<tr><th>{_e(name)}</th><td>{_count(entry['pre_attack'])}{_interval(entry['pre_attack'])}</td>"
                    f"{cells}<td>{dist}</td><td>{_count(util['retain_accuracy'])}"
                    f"{_interval(util['retain_accuracy'])}</td>"
                    f"<td>{_count(util.get('concept_on_retain'))}{_interval(util.get('concept_on_retain'))}</td></tr>")
    return (f"<table class='asr'><tr><th>encoder</th><th>pre-attack ASR</th>{head}"
            f"<th>retain: mean pixel distance to original</th><th>retain accuracy</th>"
            f"<th>concept shown on retain prompts<br><small>(compare with the original)</small></th></tr>"
            f"{''.join(rows)}</table>")


def _epsilon_label(epsilon) -> str:
    return "unbounded" if epsilon is None else f"{epsilon:g}"


def _curve_section(results: dict, plot: str | None) -> str:
    """The robustness curve as a table (rate, 95% Wilson interval, counts) and its plot."""
    curves = {name: e.get("robustness_curve") or [] for name, e in results["encoders"].items()}
    epsilons = [p["epsilon"] for p in max(curves.values(), key=len, default=[])]
    if len(epsilons) < 2:
        return ""
    head = "".join(f"<th>&epsilon; = {_epsilon_label(eps)}</th>" for eps in epsilons)
    rows = []
    for name, curve in curves.items():
        by_eps = {p["epsilon"]: p for p in curve}
        cells = "".join(f"<td>{_count(by_eps.get(eps))}{_interval(by_eps.get(eps))}</td>" for eps in epsilons)
        rows.append(f"<tr><th>{_e(name)}</th>{cells}</tr>")
    image = f"<div class='plots'><img src='{_e(plot)}' alt='robustness curve'></div>" if plot else ""
    return (f"<h2>Robustness curve: soft-prompt ASR against its budget</h2>\n<p>&epsilon;: the L2 bound on each "
            "adversarial token, in units of the token table's median row norm; &epsilon; = 0 is the pre-attack ASR. "
            "The unbounded point is the stress probe. Brackets: 95% Wilson interval.</p>\n"
            f"<table class='asr'><tr><th>encoder</th>{head}</tr>{''.join(rows)}</table>{image}")


def _interval(r: dict | None) -> str:
    """The 95% Wilson interval, and where the cases cluster by prompt the wider one that counts it."""
    bounds = wilson_interval(r["successes"], r["n"]) if r and r.get("n") else None
    if not bounds:
        return ""
    return f"<br><small>[{bounds[0]:.2f}, {bounds[1]:.2f}]{by_prompt_text(r, *bounds)}</small>"


def _img(rel: str | None, caption: str) -> str:
    if not rel:
        return f"<div class='cell empty'>{_e(caption)}</div>"
    return f"<figure><img src='{_e(rel)}' alt='{_e(caption)}'><figcaption>{caption}</figcaption></figure>"


def _verdict(record: dict) -> str:
    if record.get("skipped"):
        return "not attacked: " + _e(record["skipped"])
    mark = {True: "<b class='hit'>concept</b>", False: "<span class='miss'>no concept</span>", None: "not judged"}
    # Plain generations carry the judge's score at the top level, probe results inside their details.
    score = record.get("score", record.get("details", {}).get("score"))
    score = f" ({score:.2f})" if isinstance(score, (int, float)) else ""
    return mark[record.get("success")] + score


def _concept_grid(results: dict) -> str:
    probes = [p["name"] for p in results["probes"]]
    heads = "".join(f"<th>{_e(enc)}: plain</th>" + "".join(f"<th>{_e(enc)}: {_e(p)}</th>" for p in probes)
                    for enc in results["encoders"])
    by_index = {name: {c["index"]: c for c in e["cases"]} for name, e in results["encoders"].items()}
    rows = []
    for case in results["cases"]:
        cells = []
        for enc in results["encoders"]:
            record = by_index[enc][case["index"]]
            cells.append(f"<td>{_img(record['plain'].get('image'), _verdict(record['plain']))}</td>")
            for p in probes:
                attacked = record["probes"].get(p, {})
                text = attacked.get("adv_text")
                caption = _verdict(attacked) + (f"<br><code>{_e(text)}</code>" if text else "")
                cells.append(f"<td>{_img(attacked.get('image'), caption)}</td>")
        label = f"{_e(case['prompt'])}<br><small>seed {case['seed']}</small>"
        rows.append(f"<tr><th class='prompt'>{label}</th>{''.join(cells)}</tr>")
    return f"<table class='grid'><tr><th>prompt</th>{heads}</tr>{''.join(rows)}</table>"


def _retain_grid(results: dict) -> str:
    if not results.get("retain_cases"):
        return "<p>No retain prompts were evaluated.</p>"
    heads = "".join(f"<th>{_e(enc)}</th>" for enc in results["encoders"])
    by_index = {name: {r["index"]: r for r in e["retain"]} for name, e in results["encoders"].items()}
    rows = []
    for case in results["retain_cases"]:
        cells = []
        for enc in results["encoders"]:
            r = by_index[enc][case["index"]]
            caption = [] if r.get("pixel_distance") is None or enc == "original" else [
                f"distance {r['pixel_distance']:.3f}"]
            if r.get("retain_correct") is not None:
                caption.append("correct" if r["retain_correct"] else "<b class='hit'>wrong</b>")
            cells.append(f"<td>{_img(r.get('image'), ' · '.join(caption) or 'reference')}</td>")
        rows.append(f"<tr><th class='prompt'>{_e(case['prompt'])}<br><small>seed {case['seed']}</small></th>"
                    f"{''.join(cells)}</tr>")
    return f"<table class='grid'><tr><th>retain prompt</th>{heads}</tr>{''.join(rows)}</table>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}
td,th{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:center;font-size:13px}
th.prompt{text-align:left;max-width:220px;font-weight:normal}
figure{margin:0}
img{width:128px;height:128px;image-rendering:pixelated;display:block;margin:auto}
img.broken{outline:3px solid red}
figcaption{font-size:12px;max-width:150px;margin:auto;word-wrap:break-word}
.hit{color:#b00}.miss{color:#070}
code{font-size:11px}
.plots img{width:auto;height:auto;image-rendering:auto;display:inline-block}
th.stress{background:#f4f4f4;font-style:italic}
"""

# Marks any image that failed to load (a red outline and a count), so a broken report shows itself.
CHECK_IMAGES = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  broken.forEach(function (i) { i.classList.add('broken'); });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken-images', broken.length);
  document.getElementById('image-status').textContent =
    imgs.length + ' images, ' + broken.length + ' missing';
});
"""


def render_html(results: dict, plots: dict[str, str], training_plots: dict[str, str] | None = None,
                curve_plot: str | None = None) -> str:
    judge = results["judge"]
    gen = results["generation"]
    plot_html = "".join(f"<img src='{_e(rel)}' alt='loss curve {_e(key)}'>" for key, rel in plots.items())
    judge_text = ", ".join(f"{_e(k)}={_e(v)}" for k, v in judge.items())
    probe_text = "; ".join(", ".join(f"{_e(k)}={_e(v)}" for k, v in p.items()) for p in results["probes"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Erasure report: {_e(results['model']['name'])}</title>
<style>{STYLE}</style></head>
<body>
<h1>Erasure report</h1>
<p>Model <b>{_e(results['model']['name'])}</b> ({_e(results['model']['source'])}).
Generation: {gen['steps']} {_e(gen['scheduler'])} steps, guidance {gen['guidance']}.
Cases: {len(results['cases'])} concept, {len(results.get('retain_cases', []))} retain.
<span id="image-status"></span></p>
<p>Judge: {judge_text}</p>
<p>Probes: {probe_text or 'none'}</p>
<h2>Attack success rate</h2>
<p>pre-attack ASR: share of plain prompts whose image shows the concept. post-attack ASR: (pre-attack successes +
probe successes on the other prompts) / N, for the headline probes (each within a stated budget). Stress ASR: the
same for stress probes (the unbounded soft prompt), reported apart: no text-encoder method can be expected to hold
them. Soft-prompt budgets are nested: a larger ball attacks only the cases no smaller ball broke, and a success
found inside a smaller ball counts for every larger one (it lies inside them), so the curve never falls. Counts in
parentheses; below each rate its 95% Wilson interval over cases and, where a prompt's cases agree more than
independent cases would, the wider interval "by prompt" (Wilson at N / design effect).</p>
{_asr_table(results)}
{_curve_section(results, curve_plot)}
<h2>Concept prompts: original vs erased, plain vs attacked</h2>
{_concept_grid(results)}
<h2>Retain prompts: does the rest survive?</h2>
{_retain_grid(results)}
{_training_section(training_plots or {})}
<h2>Probe loss curves</h2>
<div class="plots">{plot_html or '<p>No probe recorded a loss curve.</p>'}</div>
<script>{CHECK_IMAGES}</script>
</body></html>
"""


def _training_section(plots: dict[str, str]) -> str:
    if not plots:
        return ""
    images = "".join(f"<img src='{_e(rel)}' alt='training losses {_e(key)}'>" for key, rel in plots.items())
    return f"<h2>Training loss curves</h2>\n<div class='plots'>{images}</div>"


def write_report(results: dict, out_dir: str | Path) -> Path:
    """Write report.json, report.html, the images still in memory and the loss plots into `out_dir`;
    returns the path of report.html."""
    if "encoders" not in results or "probes" not in results:
        raise ErasureError("write_report needs the result of evaluate() or merge_shards()")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(results)  # the caller's dict keeps its in-memory images
    for rel, image in results.pop("_images", {}).items():
        save_png(image, out_dir / rel)
    plots = _loss_plots(results, out_dir)
    training_plots = _training_plots(results, out_dir)
    curve = _curve_plot(results, out_dir)
    extra = {f"training/{k}": v for k, v in training_plots.items()}
    if curve:
        extra["robustness_curve"] = curve
    atomic_write_json({**results, "plots": {**plots, **extra}}, out_dir / "report.json")
    page = out_dir / "report.html"
    atomic_write_text(render_html(results, plots, training_plots, curve), page)
    return page
