"""`evaluate`: pre/post-attack ASR and utility of encoders over a prompt set, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ErasureError
from .common import add_generation_args, add_model_args, model_and_encoder, probes_from_specs


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="pre/post-attack ASR and utility of encoders over a prompt set")
    add_model_args(p)
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=FILE",
                   help="an encoder to evaluate beside the original; repeat for several")
    p.add_argument("--prompts", default=None, help="CSV with a 'prompt' column (optional seed, guidance, "
                                                   "negative_prompt), e.g. an I2P-derived benchmark file")
    p.add_argument("--prompt", action="append", default=[], help="a concept prompt; repeat for several")
    p.add_argument("--retain-prompt", action="append", default=[], help="a prompt that must keep working")
    p.add_argument("--probe", action="append", default=[], help="probe spec; repeat for several (default: all)")
    p.add_argument("--curve", action="store_true",
                   help="add the robustness curve: the soft prompt at epsilon 0.5, 1, 2, 4 x the median token norm "
                        "and unbounded (the stress probe)")
    p.add_argument("--batch-size", type=int, default=8, help="cases generated and attacked at once")
    p.add_argument("--concept", default="")
    p.add_argument("--judge", required=True)
    p.add_argument("--seeds", default="0", help="comma-separated seeds crossed with plain prompts")
    add_generation_args(p)
    p.add_argument("--out", default="out/evaluate")
    p.add_argument("--shard", action="store_true", help="split the cases across `accelerate launch` processes")
    p.add_argument("--choose", default=None, metavar="PROBE",
                   help="best of k: name the --encoder that PROBE broke least, counting retain failures too "
                        "(erasure_core/selection.py), in OUT/choice.json; use prompts you will not make a claim on")
    return p


def _named_encoders(specs: list[str], model):
    from ..encoders import load_robust_text_encoder

    encoders = {}
    for spec in specs:
        if "=" not in spec:
            raise ErasureError(f"--encoder takes NAME=FILE (e.g. erased=nudity.safetensors), got {spec!r}")
        name, path = spec.split("=", 1)
        name = name.strip()
        if name in encoders or name == "original":
            # a repeated name used to replace the earlier encoder without a word
            raise ErasureError(f"--encoder {spec}: the name {name!r} is taken ('original' is the model's own "
                               "encoder): give each encoder its own name")
        encoder = load_robust_text_encoder(path, reference=model.text_encoder)
        encoders[name] = encoder.to(model.device, model.dtype).requires_grad_(False).eval()
    return encoders


def run(args) -> None:
    from tqdm.auto import tqdm

    from ..evaluate import evaluate
    from ..sharding import evaluate_sharded
    from ..judges.registry import build_judge

    if not args.prompts and not args.prompt:
        raise ErasureError("evaluate needs prompts: --prompts FILE.csv or one or more --prompt TEXT")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ErasureError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    model, _ = model_and_encoder(args, None)
    encoders = _named_encoders(args.encoder, model)
    judge = build_judge(args.judge)
    probes = probes_from_specs(args.probe, args.concept)
    if args.curve:
        from ..attacks.soft_probe import robustness_probes

        names = {p.name for p in probes}
        probes += [p for p in robustness_probes() if p.name not in names]
    _check_choice(args, probes, judge)
    prompts = args.prompts or args.prompt
    bar = tqdm(desc="evaluate", unit="step", dynamic_ncols=True)

    def progress(done: int, total: int, what: str) -> None:
        bar.total, bar.n = total, done
        bar.set_postfix_str(what[:40], refresh=True)

    options = dict(seeds=seeds, steps=args.steps, guidance=args.guidance, scheduler=args.scheduler,
                   retain_prompts=args.retain_prompt, out_dir=args.out, progress=progress,
                   batch_size=args.batch_size)
    try:
        if args.shard:
            results = evaluate_sharded(model, encoders, prompts, probes, judge, **options)
        else:
            results = evaluate(model, encoders, prompts, probes, judge, **options)
    finally:
        bar.close()
    for name, entry in results["encoders"].items():
        post = ", ".join(f"{p} {v['successes']}/{v['n']}" for p, v in entry["post_attack"].items())
        stress = ", ".join(f"{p} {v['successes']}/{v['n']}" for p, v in entry["stress_attack"].items())
        pre = entry["pre_attack"]
        print(f"{name}: pre-attack {pre['successes']}/{pre['n']}; post-attack {post}"
              + (f"; stress (unbounded, not headline) {stress}" if stress else ""))
    print(f"report: {Path(args.out) / 'report.html'}")
    if args.choose:
        _write_choice(results, args.choose, Path(args.out) / "choice.json")


def _check_choice(args, probes, judge) -> None:
    """--choose's input, checked before any image is made."""
    if not args.choose:
        return
    names = [p.name for p in probes]
    if args.choose not in names:
        raise ErasureError(f"--choose {args.choose}: not among the probes evaluated ({', '.join(names)})")
    if len(args.encoder) < 2:
        raise ErasureError("--choose needs at least two --encoder NAME=FILE to choose from (e.g. trained with "
                           "`erase --seed 0`, `--seed 1`, ...)")
    if not args.retain_prompt:
        raise ErasureError("--choose needs --retain-prompt: an encoder that breaks every image would win on the "
                           "probe alone")
    if getattr(judge, "check_retain", None) is None:
        raise ErasureError(f"--choose needs a judge that checks retain images (the demo's, demo:VALUE); --judge "
                           f"{args.judge} does not, so retain failures could not be counted")


def _write_choice(results: dict, probe: str, path: Path) -> None:
    from ..files import atomic_write_json
    from ..selection import choose_from_report

    choice = choose_from_report(results, probe)
    atomic_write_json(choice, path)
    for name, c in choice["candidates"].items():
        probe_rate, retain = c["probe"], c["retain_accuracy"]
        print(f"{'chosen' if name == choice['chosen'] else '      '} {name}: {probe} {probe_rate['successes']}/"
              f"{probe_rate['n']}, retain {retain['successes']}/{retain['n']} (score {c['score']})")
    print(f"choice: {path}")
