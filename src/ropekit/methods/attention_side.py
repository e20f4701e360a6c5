"""Attention-side methods: the entropy-aware logit scale, Entropy-Aware ABF, and Self-Extend.

These only build a plan (plain, JSON-serialisable data stored in ``config.ropekit``); the computation lives in
:mod:`ropekit.methods.runtime`, which runs inside transformers' ``AttentionInterface``.
"""

from __future__ import annotations

from ..errors import RopekitError
from ..registry import Context, Method, Param, Plan, register
from .frequency import THETA, THETA_FACTOR, abf_theta

LAYERS = Param(
    "layers", "layers", "auto",
    "layers whose queries are scaled: auto (all but 0-1 and sliding-window layers, as in the EABF paper), "
    "entropy (all but the layers whose attention entropy in the unextended model rises with length close to uniform, "
    "as layers 0-1 do in the paper; measured by a probe inside the native window), "
    "all (every layer, as the EABF reference code actually does), none, or indices like 2-29")
SCALE_LENGTH = Param("scale_length", "int", None, "c in t = max(1, ln(pos+1)/ln c); default the model's native length", minimum=2)
PROBE_TEXT = Param("probe_text", "str", "paradise_lost",
                   "natural text the entropy probe reads for layers=entropy: a named corpus or a .txt path")


def resolve_layers(ctx: Context, layers, method: str, probe_text: str = "paradise_lost") -> tuple[list[int], dict | None]:
    """The scaled layers, and for ``layers=entropy`` the probe's choice (recorded with the checkpoint)."""
    if layers == "auto":
        return [i for i in range(ctx.num_layers) if i >= 2 and i not in ctx.sliding_layers], None
    if layers == "entropy":
        if ctx.probe is None:
            raise RopekitError(f"{method}: layers=entropy needs to probe the model, which this call cannot do",
                               "call ropekit.extend on a loaded model (with its tokenizer) or pass explicit layers")
        choice = ctx.probe(probe_text)
        return [i for i in range(ctx.num_layers) if i not in choice["unscaled"] and i not in ctx.sliding_layers], choice
    if layers == "all":
        return list(range(ctx.num_layers)), None
    if layers == "none":
        return [], None
    bad = [i for i in layers if i >= ctx.num_layers]
    if bad:
        raise RopekitError(f"{method}: layer {bad[0]} does not exist (the model has {ctx.num_layers} layers, 0-{ctx.num_layers - 1})",
                           f"pass layers within 0-{ctx.num_layers - 1}")
    return list(layers), None


def logit_scale_plan(ctx: Context, p: dict, method: str) -> tuple[dict, dict]:
    c = p["scale_length"] or ctx.native_length
    layers, choice = resolve_layers(ctx, p["layers"], method, p["probe_text"])
    resolved = {"scale_length": c, "layers": layers}
    if choice is not None:
        resolved["layer_choice"] = {"rule": "entropy", **choice}
    return {"scale_length": c, "layers": layers}, resolved


def build_logscale(ctx: Context, p: dict) -> Plan:
    attn, resolved = logit_scale_plan(ctx, p, "logscale")
    return Plan(attention={"logit_scale": attn}, resolved=resolved)


def build_eabf(ctx: Context, p: dict) -> Plan:
    theta = abf_theta(ctx, p, "eabf")
    if ctx.target_length is not None and ctx.target_length <= ctx.native_length:
        raise RopekitError(f"eabf: target length {ctx.target_length} is not beyond the native {ctx.native_length}",
                           f"choose a target above {ctx.native_length} or leave it out")
    attn, resolved = logit_scale_plan(ctx, p, "eabf")
    rope = {"rope_theta": theta, "rope_type": "default"}
    if "partial_rotary_factor" in ctx.rope_parameters:
        rope["partial_rotary_factor"] = ctx.rope_parameters["partial_rotary_factor"]
    return Plan(rope, ctx.target_length, attention={"logit_scale": attn}, resolved={"rope_theta": theta, **resolved})


def self_extend_max_position(length: int, group: int, window: int) -> float:
    """Largest position Self-Extend feeds RoPE for a sequence of ``length`` tokens: (L-1)//G + W - W/G."""
    return (length - 1) // group + window - window / group


def build_self_extend(ctx: Context, p: dict) -> Plan:
    native = ctx.native_length
    window = p["window"] if p["window"] is not None else native // 4
    if window >= native:
        raise RopekitError(f"self_extend: window {window} must be below the native length {native}", f"pass window < {native}, e.g. {native // 4}")
    group = p["group"]
    if group is None:
        if ctx.target_length is None:
            raise RopekitError("self_extend needs a target length or a group size", "pass target_length=32k or group=8")
        group = 2
        while self_extend_max_position(ctx.target_length, group, window) > native - 1:
            group += 1
    elif ctx.target_length is not None and self_extend_max_position(ctx.target_length, group, window) > native - 1:
        raise RopekitError(f"self_extend: with group {group} and window {window} a {ctx.target_length}-token input reaches position "
                           f"{self_extend_max_position(ctx.target_length, group, window):.0f}, beyond the native {native}",
                           "increase group or decrease window")
    if ctx.target_length is not None and ctx.target_length <= native:
        raise RopekitError(f"self_extend: target length {ctx.target_length} is not beyond the native {native}", f"choose a target above {native}")
    layers = [i for i in range(ctx.num_layers) if i not in ctx.sliding_layers]
    attn = {"group": group, "window": window, "layers": layers, "rope_theta": ctx.theta, "rotary_dim": ctx.rotary_dim}
    return Plan(attention={"self_extend": attn}, max_position_embeddings=ctx.target_length,
                resolved={"group": group, "window": window})


def build_none(ctx: Context, p: dict) -> Plan:
    return Plan()


register(Method("none", "none", "the original model, unchanged (a baseline row)", "-", (), build_none))
register(Method(
    "logscale", "attention",
    "entropy-aware logit scale: query at position i multiplied by max(1, ln(i+1)/ln c); combine with any frequency method",
    "Zhang et al. 2024 (Entropy-ABF), arXiv 2401.07004", (SCALE_LENGTH, LAYERS, PROBE_TEXT), build_logscale))
register(Method(
    "eabf", "both",
    "Entropy-Aware ABF: base θ×50 (10k → 500k) plus the entropy-aware logit scale, layers 0-1 unscaled",
    "Zhang et al. 2024, arXiv 2401.07004", (THETA, THETA_FACTOR, SCALE_LENGTH, LAYERS, PROBE_TEXT), build_eabf))
register(Method(
    "self_extend", "attention",
    "Self-Extend: exact neighbour attention within a window, grouped (floor-divided) positions beyond it; training-free",
    "Jin et al. 2024 (LLM Maybe LongLM), arXiv 2401.01325", (
        Param("group", "int", None, "group size G; default the smallest G that keeps the target within the native window", minimum=1),
        Param("window", "int", None, "neighbour window W; default native_length / 4", minimum=1),
    ), build_self_extend))
