"""Build probes by name, with options, for the CLI, the nodes, the demo and `evaluate`:

    build_probe("unlearndiffatk", concept="nudity", steps_per_timestep=5)
    parse_probe_spec("soft_prompt:k=3:steps=50:epsilon=2:restarts=3", concept="nudity")
    parse_probe_spec("soft_prompt:epsilon=none")   # unbounded: the stress probe, named soft_prompt_unbounded

Names: soft_prompt, unlearndiffatk, concept_vector. Options are the fields of each probe's config dataclass;
`none` gives None to an option that may be None (epsilon, UnlearnDiffAtk's k).
"""

from __future__ import annotations

from ..errors import ErasureError
from ..options import option_names, parse_spec
from .base import Probe
from .concept_vector import ConceptVectorConfig, ConceptVectorProbe
from .soft_probe import SoftPromptProbe, SoftPromptProbeConfig
from .unlearndiffatk import UnlearnDiffAtk, UnlearnDiffAtkConfig

PROBES = {
    "soft_prompt": (SoftPromptProbe, SoftPromptProbeConfig),
    "unlearndiffatk": (UnlearnDiffAtk, UnlearnDiffAtkConfig),
    "concept_vector": (ConceptVectorProbe, ConceptVectorConfig),
}


def probe_names() -> list[str]:
    return list(PROBES)


def build_probe(name: str, concept: str = "", **options) -> Probe:
    """A probe by name; `concept` fills the config's concept field where it has one (UnlearnDiffAtk uses it
    for its default k, the concept-vector probe for its prompt pairs)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in PROBES:
        raise ErasureError(f"unknown probe {name!r}: use one of {', '.join(PROBES)}")
    probe_cls, config_cls = PROBES[key]
    fields = option_names(config_cls)  # a nested config's fields too (the soft-prompt probe's k, steps, ...)
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise ErasureError(f"probe {key!r} has no option(s) {unknown}; its options are {', '.join(fields)}")
    if "concept" in fields and concept and "concept" not in options:
        options["concept"] = concept
    return probe_cls(config_cls(**options))


def parse_probe_spec(spec: str, concept: str = "") -> Probe:
    """'name[:key=value]...' -> a probe, e.g. 'unlearndiffatk:k=3:steps_per_timestep=10' (values typed by the
    probe's config dataclass: `erasure_core.options`)."""
    parsed = parse_spec(spec, {name: config for name, (_, config) in PROBES.items()}, what="probe")
    return build_probe(parsed.name, concept, **parsed.options)
