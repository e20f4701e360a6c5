"""The method registry: every context-extension method is one :class:`Method` registered by name.

A method is pure data plus one function ``build(ctx, params) -> Plan`` that says what to change: new RoPE
parameters (the frequency side, computed later by transformers' own ``ROPE_INIT_FUNCTIONS``) and/or an attention
plan (the attention side, applied by :mod:`ropekit.methods.runtime`). Nothing here touches a model; :func:`ropekit.extend`
does, in one place.

Methods compose with ``+``: ``"yarn+logscale"`` is YaRN frequencies with the entropy-aware logit scale. At most one
frequency method may take part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import RopekitError


@dataclass(frozen=True)
class Param:
    """One parameter of a method. ``default=None`` means "derived from the model and target length"."""

    name: str
    kind: str  # "float" | "int" | "bool" | "str" | "floats" (a list of floats) | "layers"
    default: Any
    help: str
    minimum: float | None = None  # inclusive lower bound for numbers
    above: float | None = None  # exclusive lower bound for numbers
    choices: tuple[str, ...] | None = None

    def parse(self, value: Any, method: str) -> Any:
        """Convert a CLI string or Python value to this parameter's type, or raise one clear line."""
        where = f"parameter {self.name!r} of method {method!r}"
        try:
            value = _convert(self.kind, value)
        except (TypeError, ValueError) as err:
            raise RopekitError(f"{where}: {err}", f"give a {self.kind} value, e.g. {self.name}={self.example()}") from None
        if self.kind in ("float", "int") and value is not None:
            if self.above is not None and not value > self.above:
                raise RopekitError(f"{where} must be > {self.above:g}, got {value:g}", f"pass {self.name} > {self.above:g}")
            if self.minimum is not None and value < self.minimum:
                raise RopekitError(f"{where} must be ≥ {self.minimum:g}, got {value:g}", f"pass {self.name} ≥ {self.minimum:g}")
        if self.choices is not None and value not in self.choices:
            raise RopekitError(f"{where} must be one of {', '.join(self.choices)}; got {value!r}", f"pick one of {', '.join(self.choices)}")
        return value

    def example(self) -> str:
        return {"float": "4.0", "int": "8", "bool": "true", "str": "value", "floats": "[1.0,1.5]", "layers": "2-29"}[self.kind]


def parse_bool(value) -> bool:
    """A boolean given as a Python bool or as CLI text (``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``);
    raises ValueError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _convert(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, str):
            from .lengths import parse_length

            return parse_length(value) if value.strip()[-1:] in "kKmM" else int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if kind == "bool":
        return parse_bool(value)
    if kind == "str":
        return str(value)
    if kind == "floats":
        if isinstance(value, str):
            text = value.strip()
            if not text.startswith("["):
                path = Path(text).expanduser()
                if not path.is_file():
                    raise ValueError(f"{text!r} is neither a JSON list nor a readable JSON file")
                text = path.read_text()
            value = json.loads(text)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError("expected a list of numbers")
        return [float(v) for v in value]
    if kind == "layers":
        return parse_layers(value)
    raise AssertionError(kind)


LAYER_KEYWORDS = ("auto", "all", "none", "entropy")


def parse_layers(value: Any) -> str | list[int]:
    """``"auto"``, ``"all"``, ``"none"``, ``"entropy"``, ``"2-29"``, ``"0,2,5-7"`` or a list of ints → keyword or sorted ints."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in LAYER_KEYWORDS:
            return text
        layers: set[int] = set()
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = part.split("-", 1)
                start, stop = int(lo), int(hi)
                if stop < start:
                    raise ValueError(f"empty layer range {part!r}")
                layers.update(range(start, stop + 1))
            else:
                layers.add(int(part))
        value = sorted(layers)
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ValueError("expected non-negative layer indices")
        return sorted(set(value))
    raise ValueError("expected auto, all, none, entropy, or layer indices like 2-29")


@dataclass
class Context:
    """What a method may read: the model's RoPE facts and the requested lengths. Built by :func:`ropekit.extend`."""

    model_type: str
    rope_parameters: dict  # the rope parameters the extension starts from (for per-layer-type configs: the full-attention entry)
    rotary_dim: int  # number of dimensions RoPE rotates (head_dim × partial_rotary_factor)
    native_length: int  # the pre-trained context window
    target_length: int | None  # the requested window (None when the method does not need one)
    num_layers: int
    sliding_layers: frozenset[int]  # layers that only ever see a local window
    # layers=entropy: probe the unextended model on a text source → :func:`ropekit.methods.entropy_probe.choose_unscaled_layers`'s dict
    probe: Callable[[str], dict] | None = None

    @property
    def theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])

    def factor(self, method: str, given: float | None) -> float:
        """The scaling factor s: ``given`` if passed, else target/native; checked to be > 1 and consistent."""
        if given is None and self.target_length is None:
            raise RopekitError(f"method {method!r} needs a target length or a factor", "pass target_length=32k (CLI: --target-length 32k) or factor=4")
        if given is not None and self.target_length is not None:
            implied = self.target_length / self.native_length
            if abs(implied - given) > 1e-6 * implied:
                raise RopekitError(
                    f"method {method!r}: factor={given:g} disagrees with target {self.target_length} / native {self.native_length} = {implied:g}",
                    "pass either the factor or the target length, not both",
                )
        factor = given if given is not None else self.target_length / self.native_length
        if not factor > 1.0:
            raise RopekitError(
                f"method {method!r} needs a factor > 1, got {factor:g} (target {self.target_length} vs native {self.native_length})",
                f"choose a target length above the model's native {self.native_length} tokens",
            )
        return float(factor)


@dataclass
class Plan:
    """What a method asks for. Frequency methods fill ``rope_parameters``; attention methods fill ``attention``."""

    rope_parameters: dict | None = None  # replaces the (full-attention) rope parameters
    max_position_embeddings: int | None = None  # new config.max_position_embeddings (None: leave as is)
    attention: dict = field(default_factory=dict)  # {"logit_scale": {...}, "self_extend": {...}}
    resolved: dict = field(default_factory=dict)  # every parameter's final value, for the record


@dataclass(frozen=True)
class Method:
    name: str
    side: str  # "frequency", "attention", "both", "none"
    summary: str
    reference: str
    params: tuple[Param, ...]
    build: Callable[[Context, dict], Plan]
    needs_target: bool = False

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise AssertionError(f"method {method.name!r} registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise RopekitError(f"unknown method {name!r}", f"use one of: {', '.join(sorted(METHODS))} (see `ropekit methods`)")
    return METHODS[key]


ALIASES = {"pi": "linear", "ntk_aware": "ntk", "dynamic_ntk": "dynamic", "entropy_abf": "eabf", "selfextend": "self_extend",
           "entropy_scale": "logscale", "log_scale": "logscale", "original": "none", "base": "none"}


def split_methods(method: str | list[str] | tuple[str, ...]) -> list[Method]:
    """``"yarn+logscale"`` or ``["yarn", "logscale"]`` → the registered methods, checked to compose."""
    names = method if isinstance(method, (list, tuple)) else str(method).split("+")
    names = [n for n in (s.strip() for s in names) if n]
    if not names:
        raise RopekitError("no method given", f"use one of: {', '.join(sorted(METHODS))}")
    methods = [get_method(n) for n in names]
    if len({m.name for m in methods}) != len(methods):
        raise RopekitError(f"method {method!r} names the same method twice", "name each method once")
    if len(methods) > 1 and any(m.name == "none" for m in methods):
        raise RopekitError("method 'none' cannot be combined with others", "drop 'none'")
    frequency = [m.name for m in methods if m.side in ("frequency", "both")]
    if len(frequency) > 1:
        raise RopekitError(f"methods {' and '.join(frequency)} both set RoPE frequencies", "combine at most one frequency method with attention-side ones (e.g. yarn+logscale)")
    attention_kinds = [m.name for m in methods if m.side in ("attention", "both")]
    if "self_extend" in attention_kinds and frequency:
        raise RopekitError(f"self_extend works on the original RoPE and cannot be combined with {frequency[0]}", "use self_extend alone or with logscale")
    if "eabf" in attention_kinds and "logscale" in attention_kinds:
        raise RopekitError("eabf already includes the logit scale", "use eabf alone, or abf+logscale to set the scale's parameters")
    return methods


def describe_methods() -> list[dict]:
    """The registry as plain data: name, side, summary, reference and every parameter with its default."""
    rows = []
    for m in sorted(METHODS.values(), key=lambda m: (["none", "frequency", "attention", "both"].index(m.side), m.name)):
        rows.append({
            "name": m.name,
            "side": m.side,
            "summary": m.summary,
            "reference": m.reference,
            "needs_target": m.needs_target,
            "params": [{"name": p.name, "type": p.kind, "default": p.default, "help": p.help} for p in m.params],
        })
    return rows
