"""The one parser for `name:key=value:...` specs and `key=value` option text, typed from a config dataclass.

    parse_spec("soft_prompt:k=3:epsilon=none", {"soft_prompt": SoftPromptProbeConfig})
        -> Spec(name="soft_prompt", positional=[], options={"k": 3, "epsilon": None})
    parse_options(["iterations=20", "layers=mlp"], EraseConfig, context="Robust Erase: ")
        -> {"iterations": 20, "layers": "mlp"}

Probes, judges, the Robust Erase node and the CLI all read user options through here, so a value means the same
thing everywhere and a wrong one gets the same message: which key, what was given, what type it needs. A value is
converted to the type the dataclass field declares: bool (true/false, yes/no, 1/0), int, float, str, `none` for a
field that may be None, and tuples/lists of those as comma-separated text. A field that may also be a str (e.g.
`layers: str | list[int]`) keeps the text: the dataclass validates it itself.

Nested configs: a field declared with `nested(factory, prefix)` holds another config dataclass (EraseConfig.attack
holds a SoftPromptConfig) whose fields are options spelled `prefix + name` (`attack_k`, `attack_epsilon`; the
soft-prompt probe uses prefix "", so its spec says `k=3`). `@flat_options` lets the class's constructor take those
names, `flat_dict` writes them back: users, presets, checkpoints and file metadata keep one flat spelling, the code
holds one config object, and a new field of the nested config is an option everywhere it is held, with no copy.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ErasureError

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")
_PREFIX = "erasure_core.options.prefix"  # dataclass field metadata: the prefix of a nested config's options


@dataclass
class Spec:
    """A parsed spec: its name, its positional parts (in order) and its typed options."""

    name: str
    positional: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def normalise_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def nested(factory, prefix: str):
    """A dataclass field holding the config `factory()` makes, its fields given as options `prefix + name`."""
    return field(default_factory=factory, metadata={_PREFIX: prefix})


def _nested_fields(config_cls) -> list[tuple[dataclasses.Field, str, type]]:
    """(field, prefix, nested config class) for each nested-config field of `config_cls`."""
    hints = typing.get_type_hints(config_cls)
    return [(f, f.metadata[_PREFIX], hints[f.name]) for f in dataclasses.fields(config_cls) if _PREFIX in f.metadata]


def _field_types(config_cls) -> dict[str, Any]:
    """{option name: type}: the dataclass's own fields, a nested config's fields under their prefixed names."""
    hints = typing.get_type_hints(config_cls)
    types_ = {}
    for f in dataclasses.fields(config_cls):
        if _PREFIX in f.metadata:
            types_.update({f.metadata[_PREFIX] + name: tp for name, tp in _field_types(hints[f.name]).items()})
        else:
            types_[f.name] = hints.get(f.name, str)
    return types_


def option_names(config_cls) -> list[str]:
    """Every option name `config_cls` takes, in field order (nested configs' fields under their prefix)."""
    return list(_field_types(config_cls))


def nest(config_cls, values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat options -> `config_cls`'s own keyword arguments: {"attack_k": 3} -> {"attack": SoftPromptConfig(k=3,
    the other fields at the field's defaults)}. A nested field may also be given itself (a config, or a dict of
    its fields as `dataclasses.asdict` writes it): the flat names then change a copy of it. Other names pass
    through untouched (the constructor refuses unknown ones)."""
    values = dict(values)
    for f, prefix, nested_cls in _nested_fields(config_cls):
        inner = {f2.name for f2 in dataclasses.fields(nested_cls)}
        flat = {name: values.pop(name) for name in list(values)
                if name.startswith(prefix) and name[len(prefix):] in inner}
        base = values.pop(f.name, None)
        if base is None or isinstance(base, Mapping):
            base = dataclasses.replace(f.default_factory(), **(base or {}))
        values[f.name] = dataclasses.replace(base, **{name[len(prefix):]: v for name, v in flat.items()})
    return values


def flat_dict(config) -> dict[str, Any]:
    """`dataclasses.asdict`, with each nested config's fields under their prefixed option names (`nest` undone)."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if _PREFIX in f.metadata:
            values.update({f.metadata[_PREFIX] + name: v for name, v in flat_dict(value).items()})
        else:
            values[f.name] = copy.deepcopy(value)
    return values


def flat_options(cls):
    """Class decorator, above `@dataclass`: `cls(attack_k=3)` builds `cls(attack=<default with k=3>)` (`nest`),
    so Python callers use the option names users type. Refuses a class where an option name would be ambiguous."""
    own = {f.name for f in dataclasses.fields(cls) if _PREFIX not in f.metadata}
    for f, prefix, nested_cls in _nested_fields(cls):
        clash = own & {prefix + f2.name for f2 in dataclasses.fields(nested_cls)}
        if clash:
            raise TypeError(f"{cls.__name__}: option(s) {sorted(clash)} name both a field and a field of {f.name}")
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **nest(cls, kwargs))

    cls.__init__ = __init__
    return cls


def _union_args(tp) -> tuple | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _not_text(tp, key: str, context: str) -> ErasureError:
    return ErasureError(f"{context}option {key}: a {_type_name(tp)} cannot be given as text; set it in Python")


def _scalar(text: str, tp, key: str, context: str):
    if tp is bool:
        lowered = text.lower()
        if lowered not in _TRUE + _FALSE:
            raise ErasureError(f"{context}option {key}={text!r} is not a valid bool: use true/false, yes/no or 1/0")
        return lowered in _TRUE
    if tp in (int, float, str):
        try:
            return tp(text)
        except ValueError:
            raise ErasureError(f"{context}option {key}={text!r} is not a valid {tp.__name__}") from None
    raise _not_text(tp, key, context)


def convert(text: str, tp, key: str, context: str = ""):
    """`text` as a value of type `tp` (see the module docstring); a clear ErasureError naming `key` otherwise.
    `context` starts every message (e.g. "probe spec 'soft_prompt:k=x': ")."""
    text = text.strip()
    args = _union_args(tp)
    if args is not None:
        if text.lower() == "none":
            if type(None) in args:
                return None
            raise ErasureError(f"{context}option {key} cannot be none; give a {_type_name(tp)}")
        if str in args:
            return text
        concrete = [a for a in args if a is not type(None)]
        if len(concrete) == 1:
            return convert(text, concrete[0], key, context)
        raise _not_text(tp, key, context)
    if text.lower() == "none":
        raise ErasureError(f"{context}option {key} cannot be none; give a {_type_name(tp)}")
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        element_args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        element = element_args[0] if element_args else str
        if origin is tuple and len(element_args) > 1 and len(set(element_args)) > 1:
            raise _not_text(tp, key, context)
        if typing.get_origin(element) is not None:
            raise _not_text(tp, key, context)
        values = [_scalar(part.strip(), element, key, context) for part in text.split(",") if part.strip()]
        return origin(values)
    return _scalar(text, tp, key, context)


def split_option_text(text: str | None, separators: str = ",;") -> list[str]:
    """A widget's option text -> "key=value" parts. Lines always separate; `separators` separate only where the
    next key=value starts, so a list value keeps its commas: "contrast_words=square,triangle, lr=1e-3" is two
    options (splitting at every comma made "triangle" an option of its own)."""
    boundary = re.compile(rf"\n|[{re.escape(separators)}]\s*(?=[A-Za-z_][\w-]*\s*=)")
    return [part.strip() for part in boundary.split(text or "") if part.strip()]


def parse_options(parts, config_cls, *, context: str = "", aliases: Mapping[str, str] | None = None,
                  positional: bool = False):
    """Typed {field: value} from `parts` ("key=value" strings) for the fields of dataclass `config_cls`.

    Keys are case-insensitive and '-' reads as '_'; `aliases` maps other spellings to field names. With
    `positional`, parts without '=' are returned too, as (positional, options); otherwise they are an error."""
    types_ = _field_types(config_cls)
    aliases = dict(aliases or {})
    values, loose = {}, []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            if positional:
                loose.append(part)
                continue
            raise ErasureError(f"{context}option {part!r} is not key=value")
        key, text = part.split("=", 1)
        key = normalise_key(key)
        key = aliases.get(key, key)
        if key not in types_:
            raise ErasureError(f"{context}unknown option {key!r}; the options are {', '.join(types_)}")
        values[key] = convert(text, types_[key], key, context)
    return (loose, values) if positional else values


def typed_values(values: Mapping[str, Any], config_cls, *, context: str = "") -> dict[str, Any]:
    """`values` for `config_cls`'s constructor, each checked against its field's type: text for a field that is
    not text is converted as option text is (`convert`); any other value must be of its field's kind (a number
    of the right kind, true/false, text, a list of the right elements) or is refused with the option's name. Why:
    a Python caller (`from_preset(..., lr="1e-3")`) or a JSON file must get the message a user of the CLI gets,
    not a TypeError from a comparison deep in validation, and `contrast_words=5` must not train on nothing.
    Unknown names pass (the constructor refuses them)."""
    types_ = _field_types(config_cls)
    out = dict(values)
    for key, value in values.items():
        tp = types_.get(key)
        if tp is None or value is None:
            continue
        if isinstance(value, str):
            args = _union_args(tp) or (tp,)
            if str not in args:
                out[key] = convert(value, tp, key, context)
            continue
        out[key] = _checked_value(value, tp, key, context)
    return out


def _checked_value(value, tp, key: str, context: str):
    """A value that is not text, checked against a field of one kind (alone or with None); a field of several
    kinds ("all" or a list of layers) is left to the config's own validation."""
    args = [a for a in (_union_args(tp) or (tp,)) if a is not type(None)]
    if len(args) != 1:
        return value
    tp = args[0]
    if tp in (int, float):
        return _checked_number(value, tp, key, context)
    if tp is bool and not isinstance(value, bool):
        raise ErasureError(f"{context}option {key} must be true or false, got {value!r}")
    if tp is str:
        raise ErasureError(f"{context}option {key} must be text, got {value!r}")
    origin = typing.get_origin(tp)
    if origin not in (tuple, list):
        return value
    elements = {a for a in typing.get_args(tp) if a is not Ellipsis}
    if not isinstance(value, (list, tuple)):
        raise ErasureError(f"{context}option {key} must be a list, got {value!r}")
    if len(elements) != 1 or next(iter(elements)) not in (int, float, str, bool):
        return value
    element = next(iter(elements))
    return origin(item if isinstance(item, str) and element is str
                  else _checked_value(item, element, f"{key} (an element)", context) for item in value)


def _checked_number(value, number, key: str, context: str):
    # bool is an int subclass, but True for "iterations" is a mistake, not 1
    kind = "a whole number" if number is int else "a number"
    wrong_kind = isinstance(value, bool) or not isinstance(value, (int, float))
    if wrong_kind or (number is int and not float(value).is_integer()):
        raise ErasureError(f"{context}option {key} must be {kind}, got {value!r}")
    return int(value) if number is int else value


def parse_spec(spec: str, configs: Mapping[str, type], *, what: str = "option",
               aliases: Mapping[str, str] | None = None, positional: bool = False) -> Spec:
    """'name[:part]...' -> Spec, its options typed by `configs[name]`. The name is case-insensitive, '-' reads
    as '_'; an unknown name is refused with the known ones listed. `what` names the thing in messages ("probe")."""
    if not isinstance(spec, str) or not spec.strip():
        raise ErasureError(f"empty {what} spec: use one of {', '.join(configs)}")
    name, *parts = spec.strip().split(":")
    key = normalise_key(name)
    if key not in configs:
        raise ErasureError(f"unknown {what} {name.strip()!r} in {spec!r}: use one of {', '.join(configs)}")
    context = f"{what} spec {spec!r}: "
    if positional:
        loose, options = parse_options(parts, configs[key], context=context, aliases=aliases, positional=True)
        return Spec(key, loose, options)
    return Spec(key, [], parse_options(parts, configs[key], context=context, aliases=aliases))
