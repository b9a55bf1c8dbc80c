"""Build a judge from a one-line spec (CLI flags, node widgets, config files):

    nudenet                                   NudeNet, preset "unlearndiffatk" (score > 0.45, nine *_EXPOSED)
    nudenet:strict                            NudeNet, preset "strict" (score > 0.6)
    nudenet:unlearndiffatk:threshold=0.5      a preset with an overridden threshold
    nudenet:classes=FEET_EXPOSED,BELLY_EXPOSED:threshold=0.3
    classifier:/path/to/folder:label1,label2:topk=5
    demo:circle                               the demo shapes-world judge for one concept
"""

from __future__ import annotations

from ..errors import ErasureError
from .base import Judge

SPEC_HELP = (
    "use 'nudenet[:unlearndiffatk|strict][:threshold=X][:classes=A,B]', "
    "'classifier:/path/to/folder:label1,label2[:topk=K]' or 'demo:<concept>'"
)


def _options(parts: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split spec parts into positional values and key=value options (keys lower-cased)."""
    positional, options = [], {}
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            options[key.strip().lower().replace("-", "_")] = value.strip()
        elif part.strip():
            positional.append(part.strip())
    return positional, options


def _float(options: dict, key: str, spec: str) -> float | None:
    if key not in options:
        return None
    try:
        return float(options.pop(key))
    except ValueError:
        raise ErasureError(f"judge spec {spec!r}: {key} must be a number") from None


def _reject_unknown(options: dict, spec: str):
    if options:
        raise ErasureError(f"judge spec {spec!r}: unknown option(s) {', '.join(options)}; {SPEC_HELP}")


def _nudenet(parts: list[str], spec: str) -> Judge:
    from .nudenet import NudeNetJudge

    positional, options = _options(parts)
    if len(positional) > 1:
        raise ErasureError(f"judge spec {spec!r}: NudeNet takes at most one preset name; {SPEC_HELP}")
    preset = positional[0].lower() if positional else "unlearndiffatk"
    threshold = _float(options, "threshold", spec)
    classes = options.pop("classes", None)
    _reject_unknown(options, spec)
    return NudeNetJudge(preset, classes.split(",") if classes else None, threshold)


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


def _classifier(parts: list[str], spec: str, root=None) -> Judge:
    from .classifier import ClassifierJudge

    positional, options = _options(parts)
    if len(positional) != 2:
        raise ErasureError(f"judge spec {spec!r}: a classifier needs a folder and target labels; {SPEC_HELP}")
    top_k = options.pop("topk", options.pop("top_k", "1"))
    if not str(top_k).isdigit():
        raise ErasureError(f"judge spec {spec!r}: topk must be a positive integer")
    _reject_unknown(options, spec)
    folder, labels = positional
    folder = _classifier_folder(folder, root, spec)
    return ClassifierJudge(folder, [label for label in labels.split(",") if label.strip()], top_k=int(top_k))


def _demo(parts: list[str], spec: str) -> Judge:
    positional, options = _options(parts)
    _reject_unknown(options, spec)
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
    kind, *parts = spec.strip().split(":")
    builder = BUILDERS.get(kind.strip().lower())
    if builder is None:
        raise ErasureError(f"unknown judge {kind!r} in spec {spec!r}; {SPEC_HELP}")
    if builder is _classifier:
        return _classifier(parts, spec, classifier_root)
    return builder(parts, spec)
