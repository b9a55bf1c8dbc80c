"""Build a judge from a one-line spec (CLI flags, node widgets, config files):

    nudenet                                   NudeNet, preset "unlearndiffatk" (score > 0.45, nine *_EXPOSED)
    nudenet:strict                            NudeNet, preset "strict" (score > 0.6)
    nudenet:unlearndiffatk:threshold=0.5      a preset with an overridden threshold
    nudenet:classes=FEET_EXPOSED,BELLY_EXPOSED:threshold=0.3
    classifier:/path/to/folder:label1,label2:topk=5
    demo:circle                               the demo shapes-world judge for one concept
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ErasureError
from ..options import normalise_key, parse_spec
from .base import Judge

SPEC_HELP = (
    "use 'nudenet[:unlearndiffatk|strict][:threshold=X][:classes=A,B]', "
    "'classifier:/path/to/folder:label1,label2[:topk=K]' or 'demo:<concept>'"
)


@dataclass
class NudeNetOptions:
    threshold: float | None = None
    classes: tuple[str, ...] | None = None


@dataclass
class ClassifierOptions:
    topk: int = 1


@dataclass
class DemoOptions:
    pass


OPTIONS = {"nudenet": NudeNetOptions, "classifier": ClassifierOptions, "demo": DemoOptions}


def _nudenet(positional: list[str], options: dict, spec: str) -> Judge:
    from .nudenet import NudeNetJudge

    if len(positional) > 1:
        raise ErasureError(f"judge spec {spec!r}: NudeNet takes at most one preset name; {SPEC_HELP}")
    preset = positional[0].lower() if positional else "unlearndiffatk"
    classes = options.get("classes")
    return NudeNetJudge(preset, list(classes) if classes else None, options.get("threshold"))


def _classifier_folder(folder: str, root, spec: str) -> str:
    """`folder` itself (the CLI), or, for a server (`root` given), a folder under `root` named without a path:
    a shared ComfyUI server must not let a workflow load arbitrary folders from its disk."""
    if root is None:
        return folder
    from pathlib import Path

    root = Path(root).resolve()
    name = folder.strip()
    resolved = (root / name).resolve()
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or root not in resolved.parents:
        raise ErasureError(
            f"judge spec {spec!r}: on this server a classifier must be a folder inside {root}; give its name "
            f"(e.g. classifier:wikiart_vit:label), not a path"
        )
    return str(resolved)


def _classifier(positional: list[str], options: dict, spec: str, root=None) -> Judge:
    from .classifier import ClassifierJudge

    if len(positional) != 2:
        raise ErasureError(f"judge spec {spec!r}: a classifier needs a folder and target labels; {SPEC_HELP}")
    top_k = options.get("topk", 1)
    if top_k < 0:
        raise ErasureError(f"judge spec {spec!r}: topk must be a positive integer")
    folder, labels = positional
    folder = _classifier_folder(folder, root, spec)
    return ClassifierJudge(folder, [label for label in labels.split(",") if label.strip()], top_k=top_k)


def _demo(positional: list[str], options: dict, spec: str) -> Judge:
    if len(positional) != 1:
        raise ErasureError(f"judge spec {spec!r}: the demo judge needs one concept, e.g. 'demo:circle'")
    try:
        # The demo judge lives with the demo world it was trained on; it imports judges.base only, never this
        # registry, so this arrow makes no cycle (tests/test_architecture.py).
        from ..demo.judge import DemoJudge, demo_retain_check
    except ImportError as exc:
        raise ErasureError(f"the demo judge is not available in this installation ({exc})") from exc
    judge = DemoJudge(positional[0])
    judge.check_retain = demo_retain_check(judge)
    return judge


BUILDERS = {"nudenet": _nudenet, "classifier": _classifier, "demo": _demo}


def build_judge(spec: str, classifier_root=None) -> Judge:
    """A judge from a spec string (see the module docstring). With `classifier_root` (the ComfyUI nodes: the
    server's models/classifiers), a classifier spec names a folder inside it; without (the CLI), any path."""
    if not isinstance(spec, str) or not spec.strip():
        raise ErasureError(f"empty judge spec; {SPEC_HELP}")
    kind = spec.strip().split(":")[0]
    builder = BUILDERS.get(normalise_key(kind))
    if builder is None:
        raise ErasureError(f"unknown judge {kind!r} in spec {spec!r}; {SPEC_HELP}")
    parsed = parse_spec(spec, OPTIONS, what="judge", aliases={"top_k": "topk"}, positional=True)
    if builder is _classifier:
        return _classifier(parsed.positional, parsed.options, spec, classifier_root)
    return builder(parsed.positional, parsed.options, spec)
