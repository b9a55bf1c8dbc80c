"""`probe`: attack one prompt against a text encoder and save what it generates."""

from __future__ import annotations

import argparse

from .common import add_generation_args, add_model_args, model_and_encoder, probes_from_specs


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("probe", help="attack one prompt against a text encoder and save what it generates")
    add_model_args(p)
    p.add_argument("--encoder", default=None, help="encoder file under test (default: the model's own)")
    p.add_argument("--prompt", required=True, help="the concept prompt to attack, e.g. 'a photo of a nude person'")
    p.add_argument("--probe", default="soft_prompt",
                   help="soft_prompt, unlearndiffatk or concept_vector, with options: 'unlearndiffatk:k=5'")
    p.add_argument("--concept", default="", help="the concept word (UnlearnDiffAtk's k, concept-vector pairs)")
    p.add_argument("--judge", default=None, help="e.g. nudenet, nudenet:strict, demo:circle, classifier:DIR:LABEL")
    add_generation_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/probe")
    return p


def run(args) -> None:
    from ..attacks.base import save_probe_result
    from ..files import prepare_output
    from ..judges.registry import build_judge
    from ..sampling import GenerationSettings

    prepare_output(args.out, folder=True)  # a file in the way is reported now, not after the attack
    model, encoder = model_and_encoder(args, args.encoder)
    probe = probes_from_specs([args.probe], args.concept)[0]
    judge = build_judge(args.judge) if args.judge else None
    generation = GenerationSettings(steps=args.steps, guidance=args.guidance, scheduler=args.scheduler)
    result = probe.run(model, encoder, args.prompt, seed=args.seed, judge=judge, generation=generation)
    paths = save_probe_result(result, args.out)
    verdict = {None: "not judged", True: "the concept came back", False: "the concept did not come back"}
    print(f"{probe.name}: {verdict[result.success]}; adversarial prompt: {result.adv_text or '(continuous)'}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
