"""``ropekit export DIR --gguf OUT.gguf``: a GGUF file for llama.cpp / Ollama, with the extension's RoPE in it.

Architectures: transformers ``llama`` and ``mistral`` (without a sliding window), both llama.cpp's ``llama``
architecture. Methods: the frequency-only ones llama.cpp runs exactly — ``linear``, ``yarn`` (default
``truncate``), ``ntk`` / ``abf`` (a new ``rope.freq_base``) and ``llama3`` (a ``rope_freqs`` tensor); the rest are
refused with one line naming what would be lost (see :mod:`.gguf_rope` for every convention).

Layout follows llama.cpp's own converter (``convert_hf_to_gguf.py``; ropekit's slow test compares the two files
key by key and tensor by tensor): its tensor names (``gguf.get_tensor_name_map``), Q/K rows permuted from
transformers' rotate-half order to llama.cpp's interleaved pairs, 1-D tensors and norms in f32, the rest in
``--dtype``; a BPE tokenizer as ``tokenizer.ggml.model = gpt2`` with the llama.cpp pre-tokenizer whose splitting
reproduces the tokenizer's own tokens (``tokenizer.ggml.pre``), merges, special tokens and chat template.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..errors import RopekitError
from .bundle import runtime_needs
from .gguf_rope import rope_to_gguf

GGUF_ARCH = {"llama": "llama", "mistral": "llama"}  # transformers model type → llama.cpp architecture
DTYPES = {"f32": torch.float32, "f16": torch.float16}

# llama.cpp's pre-tokenizers ropekit can choose from: name, split regexes (src/llama-vocab.cpp, applied in order),
# and whether llama.cpp cleans up spaces when decoding with it (`clean_spaces`).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZERS = (
    ("smollm", (r"\p{N}", GPT2_REGEX), False),
    ("gpt-2", (GPT2_REGEX,), True),
    ("llama-bpe", (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",), True),
    ("qwen2", (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",), False),
)
# A probe covering what the pre-tokenizers disagree on: digit runs, contractions, whitespace runs, newlines, punctuation
# runs, letters of several scripts, emoji.
PROBE = ("Hello world! I'm here, you'RE there; we'll see... 3 33 333 3333 12345678 3.14 1,000,000\n\n  indented\tline\r\n"
         "x=1+2*3 -- ==> ''' \"\"\" ``` !!! ??? ...... über café naïve Ελληνικά Русский 日本語の文章 中文 한국어 🚀🦙 🤖\n"
         "   trailing   spaces   \n\n\nend")


def _split(text: str, regexes) -> list[str]:
    """llama.cpp's regex pre-tokenisation: each regex splits every piece into its matches and the gaps between them."""
    import regex

    pieces = [text]
    for pattern in regexes:
        compiled, out = regex.compile(pattern), []
        for piece in pieces:
            last = 0
            for match in compiled.finditer(piece):
                if match.start() > last:
                    out.append(piece[last:match.start()])
                if match.end() > match.start():
                    out.append(match.group())
                last = match.end()
            if last < len(piece):
                out.append(piece[last:])
        pieces = out
    return pieces


def _byte_level(text: str) -> str:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def detect_pre_tokenizer(tokenizer) -> str:
    """The llama.cpp pre-tokenizer name whose splitting, followed by the tokenizer's own BPE, gives the tokenizer's
    tokens on :data:`PROBE`; among several, the one whose space clean-up matches the tokenizer's."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        raise RopekitError("the tokenizer has a normalizer, which ropekit does not write to GGUF", "convert it with llama.cpp's convert_hf_to_gguf.py")
    want = backend.encode(PROBE, add_special_tokens=False).ids
    matching = []
    for name, regexes, clean_spaces in PRE_TOKENIZERS:
        got = [t.id for piece in _split(PROBE, regexes) for t in backend.model.tokenize(_byte_level(piece))]
        if got == want:
            matching.append((name, clean_spaces))
    if not matching:
        raise RopekitError("no llama.cpp pre-tokenizer that ropekit knows reproduces this tokenizer's splitting "
                           f"({', '.join(n for n, _, _ in PRE_TOKENIZERS)})", "convert it with llama.cpp's convert_hf_to_gguf.py")
    clean = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    return next((name for name, c in matching if c == clean), matching[0][0])


def _check_exportable(config: dict) -> None:
    needs = runtime_needs(config)
    record = config.get("ropekit") if isinstance(config.get("ropekit"), dict) else {}
    lost = {"logit_scale": "the entropy-aware logit scale (llama.cpp has no per-position logit scale)",
            "self_extend": "Self-Extend's grouped attention (llama.cpp's own --grp-attn is a different, KV-shifting scheme)",
            "dynamic_ntk": "dynamic NTK's length-dependent base (llama.cpp has a fixed base)"}
    if needs:
        raise RopekitError(f"GGUF cannot carry {record.get('method', 'this method')}: it would lose "
                           + "; ".join(lost.get(n, n) for n in needs),
                           "export the frequency part knowingly first (ropekit export DIR --frequency-only PLAIN), then --gguf from PLAIN")
    model_type = str(config.get("model_type"))
    if model_type not in GGUF_ARCH:
        raise RopekitError(f"ropekit writes GGUF for {', '.join(GGUF_ARCH)} models, not {model_type!r}",
                           "convert other architectures with llama.cpp's convert_hf_to_gguf.py (it reads the same rope_parameters)")
    if config.get("sliding_window"):
        raise RopekitError("this mistral model uses a sliding window, which llama.cpp's llama architecture does not", "export a model without sliding_window")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise RopekitError("this model has attention or MLP biases, which ropekit does not write to GGUF", "convert it with llama.cpp's convert_hf_to_gguf.py")


def permute_for_llama_cpp(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' rotate-half row order → llama.cpp's interleaved (x0, x1) pairs, per head.

    weight ``[n_head·head_dim, hidden]``: within each head, rows ``i`` and ``i + head_dim/2`` become neighbours.
    """
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def export_gguf(source: str | Path, output: str | Path, *, dtype: str = "f16", overwrite: bool = False) -> dict:
    """Write the checkpoint directory ``source`` as a GGUF file; returns a summary dict.

    (The CLI's ``ropekit export smollm2-135m --gguf …`` resolves the alias to its cached directory first: this module
    sits below the model loader and reads the directory with transformers itself.)
    """
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = Path(output).expanduser()
    if output.suffix != ".gguf":
        raise RopekitError(f"{output} does not end in .gguf", "name the output file e.g. model.gguf")
    if output.exists() and not overwrite:
        raise RopekitError(f"{output} exists", "choose a new file name or pass --overwrite")
    if dtype not in DTYPES:
        raise RopekitError(f"unknown GGUF dtype {dtype!r}", "use f16 or f32")
    directory = Path(source).expanduser()
    if not (directory / "config.json").is_file():
        raise RopekitError(f"{source} is not a checkpoint directory", "export from a directory written by ropekit or save_pretrained")
    if not any(directory.glob("*.safetensors")):
        raise RopekitError(f"{directory} has no .safetensors weights", "save the checkpoint with safetensors (ropekit never loads pickled files)")
    config_dict = json.loads((directory / "config.json").read_text())
    _check_exportable(config_dict)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # loading notes are not the user's business here
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError):
            tokenizer = None
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, use_safetensors=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    config = model.config
    arch = GGUF_ARCH[config.model_type]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope_keys, rope_freqs = rope_to_gguf(config.rope_parameters, head_dim)

    output.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".part")
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(tmp_name, arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(Path(directory).name)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_rope(writer, rope_keys)
        record = getattr(config, "ropekit", None)
        if isinstance(record, dict):  # provenance only; llama.cpp ignores unknown keys
            writer.add_string("ropekit.record", json.dumps(record, sort_keys=True))
        pre = _add_tokenizer(writer, gguf, tokenizer, config.vocab_size, Path(directory))
        count = _add_tensors(writer, gguf, np, model, rope_freqs, DTYPES[dtype])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp_name, output)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return {"path": str(output), "arch": arch, "context_length": config.max_position_embeddings, "dtype": dtype,
            "rope": {k: v for k, v in rope_keys.items()} | ({"rope_freqs": len(rope_freqs)} if rope_freqs else {}),
            "tensors": count, "tokenizer_pre": pre}


def _add_rope(writer, keys: dict) -> None:
    adders = {"rope.freq_base": writer.add_rope_freq_base, "rope.scaling.factor": writer.add_rope_scaling_factor,
              "rope.scaling.original_context_length": writer.add_rope_scaling_orig_ctx_len,
              "rope.scaling.yarn_beta_fast": writer.add_rope_scaling_yarn_beta_fast,
              "rope.scaling.yarn_beta_slow": writer.add_rope_scaling_yarn_beta_slow,
              "rope.scaling.attn_factor": writer.add_rope_scaling_attn_factors}
    for key, value in keys.items():
        if key == "rope.scaling.type":
            import gguf

            writer.add_rope_scaling_type({"linear": gguf.RopeScalingType.LINEAR, "yarn": gguf.RopeScalingType.YARN}[value])
        else:
            adders[key](value)


def _add_tokenizer(writer, gguf, tokenizer, vocab_size: int, directory: Path) -> str:
    """Tokens (with llama.cpp's token types), merges, special ids, BOS/EOS behaviour, chat template."""
    pre = detect_pre_tokenizer(tokenizer)
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise RopekitError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} embeddings",
                           "save a matching tokenizer with the model")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = by_id[i]
        tokens.append(token)
        if i in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size)
    # whether BOS/EOS are added is what the tokenizer does, not what a config file may claim
    probe = tokenizer("a")["input_ids"]
    special.add_special_token = {"bos": tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]}
    if tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]:
        special.add_special_token["eos"] = True  # llama.cpp adds no EOS unless told (as its converter writes it)
    if getattr(tokenizer, "chat_template", None) and not special.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
    return pre


def _add_tensors(writer, gguf, np, model, rope_freqs, dtype: torch.dtype) -> int:
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    if rope_freqs is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", np.asarray(rope_freqs, dtype=np.float32))
        count += 1
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise RopekitError(f"no llama.cpp tensor name for {name}", "convert this model with llama.cpp's convert_hf_to_gguf.py")
        data = tensor.detach().float()
        if name.endswith("q_proj.weight"):
            data = permute_for_llama_cpp(data, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = permute_for_llama_cpp(data, config.num_key_value_heads)
        keep_f32 = data.dim() <= 1 or new.endswith("_norm.weight")
        writer.add_tensor(new, data.to(torch.float32 if keep_f32 else dtype).numpy())
        count += 1
    return count
