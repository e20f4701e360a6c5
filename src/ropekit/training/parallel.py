"""Multi-device launches: what ``accelerate launch`` asked for, and whether the model and method can run that way.

``ropekit train`` calls :func:`check_launch` once, after the model is extended and before any data is prepared: a
combination the launch cannot serve stops with one line naming the conflict; what ropekit adjusts for a launch
(packing off under context parallelism, …) comes back as one line per adjustment, which ``train`` prints. After
the Trainer exists, :func:`layout` reads what accelerate actually set up (a config can ask for FSDP and still get
plain data parallelism: accelerate 1.15 enables FSDP only on GPUs), which goes into the training summary.

The launch is read from the environment that ``accelerate launch`` sets for every process (``WORLD_SIZE``,
``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_DEEPSPEED_ZERO_STAGE``,
``PARALLELISM_CONFIG_CP_SIZE``), so it is known before any process group exists. docs/training.md lists which
config ran on which hardware.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Mapping

from ..errors import RopekitError
from ..extension import rope_depends_on_length, rope_entry, sliding_layers, text_config


@dataclass(frozen=True)
class Launch:
    processes: int = 1
    sharding: str = "none"  # "none" (one process or DDP), "fsdp", "deepspeed"
    fsdp_version: int | None = None
    zero_stage: int | None = None
    context_parallel: int = 1  # processes that share one sequence (cp size)

    def describe(self) -> str:
        parts = [f"{self.processes} process{'es' if self.processes > 1 else ''}"]
        if self.sharding == "fsdp":
            parts.append(f"FSDP{self.fsdp_version}")
        elif self.sharding == "deepspeed":
            parts.append(f"DeepSpeed ZeRO-{self.zero_stage}")
        if self.context_parallel > 1:
            parts.append(f"context parallel {self.context_parallel}")
        return ", ".join(parts)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").strip().lower() in ("1", "true", "yes")


def _zero_stage(env: Mapping[str, str]) -> int | None:
    if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        return int(env["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    path = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and path != "none" and os.path.isfile(path):
        try:
            return int(json.loads(open(path).read()).get("zero_optimization", {}).get("stage"))
        except (ValueError, TypeError):
            return None
    return None


def read_launch(env: Mapping[str, str] | None = None) -> Launch:
    """The launch of this process, from the environment ``accelerate launch`` (or ``torchrun``) set."""
    env = os.environ if env is None else env
    processes = int(env.get("WORLD_SIZE", "1"))
    context_parallel = int(env.get("PARALLELISM_CONFIG_CP_SIZE", "1"))
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return Launch(processes, "deepspeed", zero_stage=_zero_stage(env), context_parallel=context_parallel)
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return Launch(processes, "fsdp", fsdp_version=int(env.get("FSDP_VERSION", "1")), context_parallel=context_parallel)
    return Launch(processes, context_parallel=context_parallel)


def uses_sliding_window(config) -> bool:
    """True when some attention layer is restricted to a window (the rule accelerate applies before CP)."""
    if getattr(config, "layer_types", None):
        return bool(sliding_layers(config))
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True) is not False


def check_context_parallel(model, options, on_gpu: bool) -> None:
    """Refuse what ring attention cannot serve: it shards every sequence over the CP processes and runs full causal
    SDPA over the shards, with ``input_ids``, ``labels`` and ``position_ids`` sharded together. One check per line."""
    config = text_config(model)
    attention = (getattr(config, "ropekit", None) or {}).get("attention") or {}
    if "self_extend" in attention:
        raise RopekitError("Self-Extend cannot run under context parallelism: it computes its own attention over contiguous keys, "
                           "and each process holds a shard of them", "train without self_extend (it needs no training: add it when evaluating)")
    if uses_sliding_window(config):
        raise RopekitError(f"context parallelism cannot serve {config.model_type}'s sliding-window layers: ring attention runs full "
                           "causal attention only", "launch this model with fsdp2.yaml (no context parallelism)")
    if options.attention == "s2":
        raise RopekitError("S²-Attn cannot run under context parallelism: its groups span the sequence that ring attention "
                           "shards across processes", "train with --attention full under context parallelism, or launch S²-Attn with ddp.yaml")
    backend = options.attn_implementation or getattr(config, "_attn_implementation", None) or "sdpa"
    if backend != "sdpa":
        raise RopekitError(f"context parallelism runs through SDPA only, not {backend}", "leave --attn-implementation at sdpa")
    if rope_depends_on_length(model):
        raise RopekitError(f"{rope_entry(config)[0].get('rope_type')} RoPE cannot run under context parallelism: its frequencies "
                           "follow the largest position of each forward, and every process would see a different one",
                           "use a static method (linear, yarn, ntk, abf, eabf, llama3)")
    if not on_gpu:
        raise RopekitError("context parallelism needs CUDA GPUs: torch's ring attention replaces only the CUDA SDPA kernels "
                           "(on CPU, aten._scaled_dot_product_flash_attention_for_cpu has no sharding strategy)",
                           "on CPUs launch with ddp.yaml or fsdp2.yaml")


def check_launch(launch: Launch, model, options, on_gpu: bool):
    """Refuse a launch that cannot serve this model and method (a RopekitError naming the conflict), before any data
    is prepared. Returns ``(options, notes)``: the options adjusted for the launch, and one line per adjustment."""
    notes = []
    shards_weights = launch.sharding == "fsdp" or (launch.sharding == "deepspeed" and launch.zero_stage == 3)
    if options.lora_r and shards_weights:
        raise RopekitError(f"LoRA cannot be merged under {launch.describe()}: ropekit merges the adapters into the base weights "
                           "before saving, and each process holds only a shard of them", "launch LoRA runs with ddp.yaml, or train fully (--lora-r 0)")
    if launch.context_parallel > 1:
        check_context_parallel(model, options, on_gpu)
        changed = []
        if options.pack:
            changed.append("packing off (ring attention masks causally only, so one document per row)")
        if options.chunked_loss:
            changed.append("loss from full logits (the Trainer shifts labels before sharding the sequence)")
        options = replace(options, pack=False, chunked_loss=False)
        changed.append(f"rows padded to a multiple of {2 * launch.context_parallel} tokens (torch's load-balanced split)")
        notes.append(f"context parallelism over {launch.context_parallel} processes: " + "; ".join(changed))
    if launch.sharding == "deepspeed" and launch.zero_stage == 3 and options.chunked_loss:
        options = replace(options, chunked_loss=False)
        notes.append("DeepSpeed ZeRO-3: loss from full logits (ZeRO-3 gathers the output layer only inside its own forward, "
                     "so the chunked loss cannot read its weight)")
    return options, notes


def layout(accelerator) -> dict:
    """What accelerate actually set up for this run (for the training summary)."""
    state = accelerator.state
    kind = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
    fsdp = getattr(state, "fsdp_plugin", None) if kind == "FSDP" else None
    deepspeed = getattr(state, "deepspeed_plugin", None) if kind == "DEEPSPEED" else None
    parallelism = getattr(accelerator, "parallelism_config", None)
    return {"distributed_type": kind, "processes": accelerator.num_processes,
            "fsdp_version": getattr(fsdp, "fsdp_version", None), "zero_stage": getattr(deepspeed, "zero_stage", None),
            "context_parallel": getattr(parallelism, "cp_size", 1) or 1}


def fallback_note(launch: Launch, actual: dict) -> str | None:
    """One line when accelerate set up something other than what the launch asked for."""
    wanted = {"fsdp": "FSDP", "deepspeed": "DEEPSPEED"}.get(launch.sharding)
    if not wanted or actual["distributed_type"] == wanted:
        return None
    why = " (accelerate enables FSDP on GPUs only)" if wanted == "FSDP" else ""
    return (f"the launch asked for {launch.describe()}, but accelerate set up {actual['distributed_type']}{why}: "
            "every process holds the whole model")
