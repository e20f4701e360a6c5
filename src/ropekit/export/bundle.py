"""Self-contained checkpoints: bundle ropekit's attention code with a checkpoint, or write the plain variant.

A checkpoint whose extension has an attention side (logit scale, Self-Extend) or dynamic NTK is not the same model
in plain transformers: transformers would silently drop the attention side (or keep dynamic NTK's scaling across
forwards). :func:`bundle_checkpoint` therefore rewrites such a checkpoint's ``config.json`` to

* ``model_type: "ropekit_<type>"`` — a type only the bundled file registers, so plain ``from_pretrained`` refuses
  and asks for ``trust_remote_code=True`` instead of loading a different model;
* ``auto_map`` → the classes in the bundled ``modeling_ropekit.py`` (transformers' documented custom-code
  mechanism), which reproduce ropekit's attention plan exactly without ropekit installed.

:func:`plain_config_dict` undoes this for ``ropekit.load_model``, which loads such a checkpoint as the stock
transformers class and runs ropekit's own attention code. :func:`export_frequency_only` writes the variant that
any server loads, with the attention side knowingly dropped.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from ..errors import RopekitError

BUNDLE_FILE = "modeling_ropekit.py"
PREFIX = "ropekit_"
# base model type → (config class, model class) in modeling_ropekit.py (a test checks they agree)
CLASS_NAMES = {
    "llama": ("RopekitLlamaConfig", "RopekitLlamaForCausalLM"),
    "mistral": ("RopekitMistralConfig", "RopekitMistralForCausalLM"),
    "qwen2": ("RopekitQwen2Config", "RopekitQwen2ForCausalLM"),
    "qwen3": ("RopekitQwen3Config", "RopekitQwen3ForCausalLM"),
    "gemma": ("RopekitGemmaConfig", "RopekitGemmaForCausalLM"),
    "gemma2": ("RopekitGemma2Config", "RopekitGemma2ForCausalLM"),
    "gemma3_text": ("RopekitGemma3TextConfig", "RopekitGemma3ForCausalLM"),
    "phi3": ("RopekitPhi3Config", "RopekitPhi3ForCausalLM"),
}


def bundled_source() -> Path:
    return Path(__file__).with_name(BUNDLE_FILE)


def rope_entries(config: dict) -> list[dict]:
    rope = config.get("rope_parameters") or {}
    return [rope] if "rope_type" in rope or "rope_theta" in rope else [v for v in rope.values() if isinstance(v, dict)]


def runtime_needs(config: dict) -> list[str]:
    """What plain transformers would get wrong for this config: the attention plans and/or dynamic NTK."""
    record = config.get("ropekit") if isinstance(config.get("ropekit"), dict) else {}
    needs = sorted(record.get("attention") or {})
    if any(entry.get("rope_type") == "dynamic" for entry in rope_entries(config)):
        needs.append("dynamic_ntk")
    return needs


def is_bundled(config: dict) -> bool:
    return str(config.get("model_type", "")).startswith(PREFIX) and isinstance(config.get("ropekit"), dict)


def base_model_type(config: dict) -> str:
    model_type = str(config.get("model_type", ""))
    return model_type[len(PREFIX):] if is_bundled(config) else model_type


def check_bundle_supported(config: dict) -> None:
    """Raise (before anything is written) when a checkpoint needs the bundle but its architecture has none."""
    if runtime_needs(config) and base_model_type(config) not in CLASS_NAMES:
        raise RopekitError(
            f"model type {config.get('model_type')!r} has no bundled ropekit modeling code, so plain transformers would "
            f"silently run this checkpoint without its {', '.join(runtime_needs(config))}",
            f"extend one of {', '.join(CLASS_NAMES)}, or save with model.save_pretrained (exact only where ropekit is imported)")


def bundle_checkpoint(directory: str | Path) -> bool:
    """Make a saved checkpoint self-contained when it needs ropekit's runtime; returns True if it did.

    Rewrites ``config.json`` (model type and ``auto_map``) and copies ``modeling_ropekit.py`` next to it. A checkpoint
    that plain transformers already runs exactly (frequency-only methods) is left untouched.
    """
    directory = Path(directory)
    path = directory / "config.json"
    config = json.loads(path.read_text())
    if not runtime_needs(config):
        return False
    check_bundle_supported(config)
    base = base_model_type(config)
    config_class, model_class = CLASS_NAMES[base]
    module = Path(BUNDLE_FILE).stem
    config["model_type"] = PREFIX + base
    config["architectures"] = [model_class]
    config["auto_map"] = {"AutoConfig": f"{module}.{config_class}", "AutoModelForCausalLM": f"{module}.{model_class}"}
    shutil.copyfile(bundled_source(), directory / BUNDLE_FILE)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


def plain_config_dict(config: dict) -> dict:
    """The stock transformers config of a bundled checkpoint (what ``ropekit.load_model`` builds the model from)."""
    from transformers import CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING

    plain = copy.deepcopy(config)
    base = base_model_type(config)
    if base not in CONFIG_MAPPING:
        raise RopekitError(f"the checkpoint's base model type {base!r} is unknown to this transformers version",
                           "upgrade transformers")
    plain["model_type"] = base
    plain.pop("auto_map", None)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(CONFIG_MAPPING[base], None)
    if model_class is not None:
        plain["architectures"] = [model_class.__name__]
    return plain


def load_config(directory: str | Path):
    """The transformers config object of a bundled checkpoint directory, built without running the bundled code."""
    from transformers import CONFIG_MAPPING

    config = json.loads((Path(directory) / "config.json").read_text())
    plain = plain_config_dict(config)
    return CONFIG_MAPPING[plain["model_type"]].from_dict(plain)


def frequency_only_config(config: dict) -> tuple[dict, list[str]]:
    """The plain-transformers config of a checkpoint with its attention side dropped, and a line per dropped part."""
    plain = plain_config_dict(config) if is_bundled(config) else copy.deepcopy(config)
    plain.pop("auto_map", None)
    record = copy.deepcopy(plain.get("ropekit")) if isinstance(plain.get("ropekit"), dict) else None
    dropped = []
    if record is not None:
        for name, plan in sorted((record.get("attention") or {}).items()):
            where = f"layers {_ranges(plan.get('layers', []))}"
            if name == "logit_scale":
                dropped.append(f"the entropy-aware logit scale (c = {plan['scale_length']}, {where})")
            elif name == "self_extend":
                dropped.append(f"Self-Extend (group {plan['group']}, window {plan['window']}, {where})")
            else:
                dropped.append(f"the attention plan {name!r}")
        if record.get("attention"):
            record["dropped_attention"] = record["attention"]
            record["attention"] = {}
            frequency = [m for m in str(record.get("method", "")).split("+") if m not in ("logscale", "self_extend")]
            record["method"] = "+".join(frequency) if frequency else "none"
            if record["method"] == "eabf":
                record["method"] = "abf"
            if record["method"] == "none":  # nothing of the extension is left: the original window too
                plain["max_position_embeddings"] = record.get("original", {}).get("max_position_embeddings", plain.get("max_position_embeddings"))
        plain["ropekit"] = record
    if any(entry.get("rope_type") == "dynamic" for entry in rope_entries(plain)):
        dropped.append("ropekit's per-forward dynamic NTK (plain transformers keeps the scaling of earlier, longer inputs)")
    return plain, dropped


def _ranges(layers: list[int]) -> str:
    if not layers:
        return "none"
    spans, start = [], layers[0]
    for prev, cur in zip(layers, layers[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(spans)


def export_frequency_only(source: str | Path, output: str | Path, *, overwrite: bool = False) -> list[str]:
    """Copy a checkpoint directory to ``output`` as the plain-transformers variant (attention side dropped).

    Returns the dropped parts (empty when the checkpoint was frequency-only already). Weights and tokenizer files are
    copied byte for byte; only ``config.json`` changes and the bundled code is left out.
    """
    source, output = Path(source).expanduser(), Path(output).expanduser()
    if not (source / "config.json").is_file():
        raise RopekitError(f"{source} is not a checkpoint directory (no config.json)", "pass a directory written by ropekit or save_pretrained")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise RopekitError(f"output directory {output} exists and is not empty", "choose a new directory or pass --overwrite")
    if output.resolve() == source.resolve():
        raise RopekitError("the output directory is the source directory", "write the plain variant to a new directory")
    config = json.loads((source / "config.json").read_text())
    plain, dropped = frequency_only_config(config)
    output.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        if item.name in ("config.json", BUNDLE_FILE) or item.is_dir():
            continue
        shutil.copyfile(item, output / item.name)
    (output / "config.json").write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")
    return dropped
