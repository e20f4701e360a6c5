"""Frequency-side methods: they only change RoPE's rotation frequencies.

Each builder returns the ``rope_parameters`` dict that transformers understands; transformers' own
``ROPE_INIT_FUNCTIONS`` then compute the frequencies (we never re-implement them). Static NTK and ABF have no
rope type of their own in transformers: they are the default type with a new ``rope_theta``.

Pitfalls these builders make impossible (see docs/methods.md):

* ``dynamic``: transformers treats ``max_position_embeddings`` as the *original* length and only rescales beyond
  it, so raising it to the target silently disables dynamic NTK. We always keep it at the native length.
* ``yarn``: ``factor`` and ``original_max_position_embeddings`` must agree with ``max_position_embeddings``; we set
  all three from one factor (transformers#38224).
"""

from __future__ import annotations

import math

from ..errors import RopekitError
from ..registry import Context, Method, Param, Plan, register

FACTOR = Param("factor", "float", None, "scaling factor s; default target_length / native_length", above=1.0)


def _base(ctx: Context) -> dict:
    """The parameters every new rope dict keeps: θ and, where the model has it, partial_rotary_factor."""
    base = {"rope_theta": ctx.theta}
    if "partial_rotary_factor" in ctx.rope_parameters:
        base["partial_rotary_factor"] = ctx.rope_parameters["partial_rotary_factor"]
    return base


def _target(ctx: Context, factor: float) -> int:
    return ctx.target_length if ctx.target_length is not None else int(round(ctx.native_length * factor))


def build_linear(ctx: Context, p: dict) -> Plan:
    s = ctx.factor("linear", p["factor"])
    return Plan({**_base(ctx), "rope_type": "linear", "factor": s}, _target(ctx, s), resolved={"factor": s})


def build_ntk(ctx: Context, p: dict) -> Plan:
    s = ctx.factor("ntk", p["factor"])
    d = ctx.rotary_dim
    theta = ctx.theta * s ** (d / (d - 2))  # NTK-aware: θ' = θ·s^(d/(d-2)) (bloc97, 2023)
    return Plan({**_base(ctx), "rope_theta": theta, "rope_type": "default"}, _target(ctx, s), resolved={"factor": s, "rope_theta": theta})


def build_dynamic(ctx: Context, p: dict) -> Plan:
    s = ctx.factor("dynamic", p["factor"])
    # max_position_embeddings stays native: transformers reads it as the length beyond which to rescale.
    return Plan({**_base(ctx), "rope_type": "dynamic", "factor": s}, ctx.native_length, resolved={"factor": s})


def build_yarn(ctx: Context, p: dict) -> Plan:
    s = ctx.factor("yarn", p["factor"])
    if p["beta_fast"] <= p["beta_slow"]:
        raise RopekitError(f"yarn: beta_fast ({p['beta_fast']:g}) must exceed beta_slow ({p['beta_slow']:g})", "use the defaults beta_fast=32 beta_slow=1")
    rope = {**_base(ctx), "rope_type": "yarn", "factor": s, "original_max_position_embeddings": ctx.native_length,
            "beta_fast": p["beta_fast"], "beta_slow": p["beta_slow"], "truncate": p["truncate"]}
    if p["attention_factor"] is not None:
        rope["attention_factor"] = p["attention_factor"]
    resolved = {"factor": s, "beta_fast": p["beta_fast"], "beta_slow": p["beta_slow"], "truncate": p["truncate"],
                "attention_factor": p["attention_factor"] if p["attention_factor"] is not None else 0.1 * math.log(s) + 1.0}
    # max_position_embeddings = native·s exactly, so transformers' implicit factor equals the explicit one.
    return Plan(rope, int(round(ctx.native_length * s)), resolved=resolved)


def build_llama3(ctx: Context, p: dict) -> Plan:
    s = ctx.factor("llama3", p["factor"])
    if p["high_freq_factor"] <= p["low_freq_factor"]:
        raise RopekitError("llama3: high_freq_factor must exceed low_freq_factor", "use the defaults low_freq_factor=1 high_freq_factor=4")
    rope = {**_base(ctx), "rope_type": "llama3", "factor": s, "low_freq_factor": p["low_freq_factor"],
            "high_freq_factor": p["high_freq_factor"], "original_max_position_embeddings": ctx.native_length}
    return Plan(rope, _target(ctx, s), resolved={"factor": s, "low_freq_factor": p["low_freq_factor"], "high_freq_factor": p["high_freq_factor"]})


def build_longrope(ctx: Context, p: dict) -> Plan:
    half = ctx.rotary_dim // 2
    if p["long_factor"] is None:
        raise RopekitError("longrope needs long_factor (one rescale factor per rotary frequency, from a LongRoPE search)",
                           f"pass long_factor=<JSON list of {half} numbers or a .json file>")
    short = p["short_factor"] if p["short_factor"] is not None else [1.0] * half
    for name, values in (("long_factor", p["long_factor"]), ("short_factor", short)):
        if len(values) != half:
            raise RopekitError(f"longrope: {name} has {len(values)} values but this model rotates {half} frequencies", f"pass exactly {half} values")
        if min(values) <= 0:
            raise RopekitError(f"longrope: {name} must be positive", "pass factors > 0")
    s = ctx.factor("longrope", p["factor"])
    rope = {**_base(ctx), "rope_type": "longrope", "long_factor": p["long_factor"], "short_factor": short, "factor": s,
            "original_max_position_embeddings": ctx.native_length}
    if p["attention_factor"] is not None:
        rope["attention_factor"] = p["attention_factor"]
    default_af = math.sqrt(1 + math.log(s) / math.log(ctx.native_length))
    return Plan(rope, _target(ctx, s), resolved={"factor": s, "long_factor": p["long_factor"], "short_factor": short,
                                                 "attention_factor": p["attention_factor"] or default_af})


ABF_THETA_FACTOR = 50.0  # Xiong et al. 2023 and Entropy-ABF: Llama-2's θ 10,000 → 500,000.


def abf_theta(ctx: Context, p: dict, method: str) -> float:
    """The new base: ``theta`` if given, else θ·theta_factor (default 50, i.e. 10k → 500k as in the papers)."""
    if p.get("theta") is not None and p.get("theta_factor") is not None:
        raise RopekitError(f"{method}: pass theta or theta_factor, not both", "drop one of them")
    theta = p["theta"] if p.get("theta") is not None else ctx.theta * (p.get("theta_factor") or ABF_THETA_FACTOR)
    if theta <= ctx.theta:
        raise RopekitError(f"{method}: the new base θ={theta:g} must exceed the model's θ={ctx.theta:g}", f"pass theta > {ctx.theta:g}")
    return float(theta)


def build_abf(ctx: Context, p: dict) -> Plan:
    theta = abf_theta(ctx, p, "abf")
    if ctx.target_length is not None and ctx.target_length <= ctx.native_length:
        raise RopekitError(f"abf: target length {ctx.target_length} is not beyond the native {ctx.native_length}",
                           f"choose a target above {ctx.native_length} or leave it out")
    return Plan({**_base(ctx), "rope_theta": theta, "rope_type": "default"}, ctx.target_length, resolved={"rope_theta": theta})


THETA = Param("theta", "float", None, "new RoPE base θ'; default θ × theta_factor", above=0.0)
THETA_FACTOR = Param("theta_factor", "float", None, f"θ' = θ × theta_factor when theta is not given (default {ABF_THETA_FACTOR:g}: 10k → 500k)", above=1.0)

register(Method(
    "linear", "frequency", "Position Interpolation: positions divided by the factor",
    "Chen et al. 2023, arXiv 2306.15595", (FACTOR,), build_linear, needs_target=True))
register(Method(
    "ntk", "frequency", "static NTK-aware: θ' = θ·s^(d/(d-2))",
    "bloc97 2023 (reddit r/LocalLLaMA); Peng et al. 2023 §3.1", (FACTOR,), build_ntk, needs_target=True))
register(Method(
    "dynamic", "frequency", "dynamic NTK: θ grows with the current length beyond the native window",
    "emozilla 2023 (reddit r/LocalLLaMA); transformers rope_type=dynamic", (FACTOR,), build_dynamic, needs_target=True))
register(Method(
    "yarn", "frequency", "YaRN: NTK-by-parts interpolation plus attention temperature 0.1·ln s + 1",
    "Peng et al. 2023, arXiv 2309.00071", (
        FACTOR,
        Param("beta_fast", "float", 32.0, "dimensions rotating more than beta_fast times in the native window are not interpolated", above=0.0),
        Param("beta_slow", "float", 1.0, "dimensions rotating less than beta_slow times are fully interpolated", above=0.0),
        Param("attention_factor", "float", None, "cos/sin multiplier; default 0.1·ln(s) + 1", above=0.0),
        Param("truncate", "bool", True, "round the ramp's dimension bounds (transformers' default)"),
    ), build_yarn, needs_target=True))
register(Method(
    "llama3", "frequency", "Llama 3.1 frequency-band rescaling",
    "Meta Llama 3.1 (2024); transformers rope_type=llama3", (
        FACTOR,
        Param("low_freq_factor", "float", 1.0, "wavelengths above native/low_freq_factor are divided by the factor", above=0.0),
        Param("high_freq_factor", "float", 4.0, "wavelengths below native/high_freq_factor are kept", above=0.0),
    ), build_llama3, needs_target=True))
register(Method(
    "longrope", "frequency", "LongRoPE with given per-frequency factors (load the result of a LongRoPE search)",
    "Ding et al. 2024, arXiv 2402.13753", (
        FACTOR,
        Param("long_factor", "floats", None, "per-frequency factors used beyond the native length (JSON list or .json file)"),
        Param("short_factor", "floats", None, "per-frequency factors used within the native length; default all 1"),
        Param("attention_factor", "float", None, "cos/sin multiplier; default sqrt(1 + ln s / ln native)", above=0.0),
    ), build_longrope, needs_target=True))
register(Method(
    "abf", "frequency", "adjusted base frequency: a larger RoPE base, no interpolation",
    "Xiong et al. 2023, arXiv 2309.16039", (THETA, THETA_FACTOR), build_abf))
