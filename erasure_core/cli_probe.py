"""The `probe` and `evaluate` commands: argument parsing into the probe/judge/evaluate API, and tqdm progress."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import add_model_args, load_model_from_args
from .errors import ErasureError


def add_probe_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("probe", help="attack one prompt against a text encoder and save what it generates")
    add_model_args(p)
    p.add_argument("--encoder", default=None, help="encoder file under test (default: the model's own)")
    p.add_argument("--prompt", required=True, help="the concept prompt to attack, e.g. 'a photo of a nude person'")
    p.add_argument("--probe", default="soft_prompt",
                   help="soft_prompt, unlearndiffatk or concept_vector, with options: 'unlearndiffatk:k=5'")
    p.add_argument("--concept", default="", help="the concept word (UnlearnDiffAtk's k, concept-vector pairs)")
    p.add_argument("--judge", default=None, help="e.g. nudenet, nudenet:strict, demo:circle, classifier:DIR:LABEL")
    _add_generation_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/probe")
    return p


def add_evaluate_parser(sub) -> argparse.ArgumentParser:
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
    _add_generation_args(p)
    p.add_argument("--out", default="out/evaluate")
    p.add_argument("--shard", action="store_true", help="split the cases across `accelerate launch` processes")
    return p


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=20, help="sampling steps of each generation")
    p.add_argument("--guidance", type=float, default=7.5)
    from .sampling import SCHEDULERS

    p.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS))


def _model_and_encoder(args, encoder_path):
    from .encoders import load_robust_text_encoder

    model = load_model_from_args(args)
    if encoder_path is None:
        return model, model.text_encoder
    encoder = load_robust_text_encoder(encoder_path, reference=model.text_encoder)
    return model, encoder.to(model.device, model.dtype).requires_grad_(False).eval()


def _probes(specs: list[str], concept: str):
    from .attacks.registry import parse_probe_spec, probe_names

    return [parse_probe_spec(spec, concept=concept) for spec in (specs or probe_names())]


def run_probe_command(args) -> None:
    from .attacks.base import save_probe_result
    from .sampling import GenerationSettings
    from .judges.registry import build_judge

    model, encoder = _model_and_encoder(args, args.encoder)
    probe = _probes([args.probe], args.concept)[0]
    judge = build_judge(args.judge) if args.judge else None
    generation = GenerationSettings(steps=args.steps, guidance=args.guidance, scheduler=args.scheduler)
    result = probe.run(model, encoder, args.prompt, seed=args.seed, judge=judge, generation=generation)
    paths = save_probe_result(result, args.out)
    verdict = {None: "not judged", True: "the concept came back", False: "the concept did not come back"}
    print(f"{probe.name}: {verdict[result.success]}; adversarial prompt: {result.adv_text or '(continuous)'}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _named_encoders(specs: list[str], model):
    from .encoders import load_robust_text_encoder

    encoders = {}
    for spec in specs:
        if "=" not in spec:
            raise ErasureError(f"--encoder takes NAME=FILE (e.g. erased=nudity.safetensors), got {spec!r}")
        name, path = spec.split("=", 1)
        encoder = load_robust_text_encoder(path, reference=model.text_encoder)
        encoders[name.strip()] = encoder.to(model.device, model.dtype).requires_grad_(False).eval()
    return encoders


def run_evaluate_command(args) -> None:
    from tqdm.auto import tqdm

    from .evaluate import evaluate, evaluate_sharded
    from .judges.registry import build_judge

    if not args.prompts and not args.prompt:
        raise ErasureError("evaluate needs prompts: --prompts FILE.csv or one or more --prompt TEXT")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ErasureError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    model, _ = _model_and_encoder(args, None)
    encoders = _named_encoders(args.encoder, model)
    judge = build_judge(args.judge)
    probes = _probes(args.probe, args.concept)
    if args.curve:
        from .attacks.soft_probe import robustness_probes

        names = {p.name for p in probes}
        probes += [p for p in robustness_probes() if p.name not in names]
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
