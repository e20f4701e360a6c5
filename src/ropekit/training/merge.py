"""``ropekit merge A B --weight w -o OUT``: the weighted average of two checkpoints of one architecture, streamed.

For every tensor, ``OUT = (w·A.float() + (1 − w)·B.float()).to(A's dtype)``; OUT keeps A's config (so A's RoPE
scaling) and tokenizer. This is LongRecipe's stage 2 (Hu et al. 2024, arXiv 2409.00509 Eq. 7: the replayed model
averaged with the original, λ = 0.5), and a linear merge in general.

Memory: tensors are read with safetensors' ``safe_open`` one row-slice at a time and written straight into the output
file, so at most one shard of A and one of B are mapped at a time, plus a few slice buffers — never a whole model, let
alone two. (``safetensors.torch.save_file`` needs a whole shard in memory, so the output is written here in the same
documented format: an 8-byte little-endian header length, a JSON header with dtype, shape and byte offsets per tensor,
padded with spaces to 8 bytes, then the raw little-endian bytes.)

A tied output head (``lm_head.weight`` absent because it shares the embedding) is taken as the embedding of the
checkpoint that lacks it; when only one side is tied, the merged head is written explicitly and OUT's config unties it.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from pathlib import Path

import torch

from ..errors import RopekitError

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"
INDEX = "model.safetensors.index.json"
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
SLICE_BYTES = 8 << 20  # fp32 bytes per slice: a handful of these buffers is all the merge holds beyond the mapped shards


def checkpoint_dir(source, role: str) -> Path:
    """A local safetensors checkpoint directory (the ``smollm2-135m`` alias included); GGUF and hub ids are refused."""
    from ..models import resolve_source

    kind, path = resolve_source(source)
    if kind == "gguf":
        raise RopekitError(f"{role} {source} is a GGUF file; merge averages safetensors checkpoints",
                           f"convert it first, e.g. ropekit extend {source} --method ... --output DIR, or load and save_pretrained it")
    if kind == "hub":
        raise RopekitError(f"{role} {source!r} is not a local directory; merge does not download models",
                           "download the checkpoint (safetensors) and pass its directory")
    return Path(path)


def weight_map(directory: Path) -> dict[str, str]:
    """Tensor name → shard file name, from the index or the single ``*.safetensors`` file."""
    from safetensors import safe_open

    index = directory / INDEX
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    files = sorted(directory.glob("*.safetensors"))
    if len(files) != 1:
        raise RopekitError(f"{directory} has {len(files)} .safetensors files and no {INDEX}",
                           "pass a directory written by save_pretrained (one file, or shards with their index)")
    with safe_open(files[0], framework="pt") as handle:
        return {name: files[0].name for name in handle.keys()}


def _meta(directory: Path, wmap: dict[str, str]) -> dict[str, tuple[str, list[int]]]:
    """Tensor name → (safetensors dtype, shape), read from the headers only."""
    from safetensors import safe_open

    meta = {}
    for file in sorted(set(wmap.values())):
        with safe_open(directory / file, framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                meta[name] = (piece.get_dtype(), list(piece.get_shape()))
    return meta


def _architecture(directory: Path) -> tuple:
    config = json.loads((directory / "config.json").read_text())
    return config.get("model_type"), tuple(config.get("architectures") or ())


def plan_merge(a: Path, b: Path) -> dict:
    """Check that A and B can be averaged and return the plan: A's shards with their tensors, and where each tensor of B
    is read from (a tied head is read from the embedding). Raises one line naming the first mismatch."""
    arch_a, arch_b = _architecture(a), _architecture(b)
    if arch_a != arch_b:
        raise RopekitError(f"cannot merge different architectures: A is {arch_a[0]} {list(arch_a[1])}, B is {arch_b[0]} {list(arch_b[1])}",
                           "merge two checkpoints of the same model (e.g. a fine-tuned model and its original)")
    map_a, map_b = weight_map(a), weight_map(b)
    meta_a, meta_b = _meta(a, map_a), _meta(b, map_b)
    source_a = {name: name for name in map_a}  # the tensor of A read for each output tensor
    source_b = {name: name for name in map_b}
    untie = False
    if (HEAD in map_a) != (HEAD in map_b):  # one side ties its head to the embedding
        tied, tied_map = (source_a, map_a) if HEAD not in map_a else (source_b, map_b)
        if EMBED not in tied_map:
            raise RopekitError(f"one checkpoint has {HEAD} and the other has neither it nor {EMBED} to tie it to",
                               "merge two checkpoints of the same architecture")
        tied[HEAD] = EMBED
        untie = HEAD not in map_a
    only_a, only_b = sorted(set(source_a) - set(source_b)), sorted(set(source_b) - set(source_a))
    if only_a or only_b:
        name, where = (only_a[0], "A but not in B") if only_a else (only_b[0], "B but not in A")
        raise RopekitError(f"tensor {name!r} is in {where} ({len(only_a)} names only in A, {len(only_b)} only in B)",
                           "merge two checkpoints of the same architecture and size")
    for name in sorted(source_a):
        (dtype_a, shape_a), (_, shape_b) = meta_a[source_a[name]], meta_b[source_b[name]]
        if shape_a != shape_b:
            raise RopekitError(f"tensor {name!r} has shape {shape_a} in A but {shape_b} in B",
                               "merge two checkpoints of the same architecture and size")
        if dtype_a not in DTYPE_BYTES:
            raise RopekitError(f"tensor {name!r} has dtype {dtype_a}, which merge does not handle", f"use one of {', '.join(DTYPE_BYTES)}")
    shards: dict[str, list[str]] = {}
    for name in sorted(source_a):
        shards.setdefault(map_a[source_a[name]], []).append(name)
    return {"shards": shards, "source_a": source_a, "source_b": source_b, "map_a": map_a, "map_b": map_b, "meta": meta_a,
            "untie": untie, "sharded": (a / INDEX).is_file()}


def _slices(shape: list[int]):
    """Row ranges of dimension 0 small enough for one slice buffer (a 0-d tensor is one piece)."""
    if not shape:
        yield None
        return
    row = max(1, math.prod(shape[1:]) * 4)
    step = max(1, SLICE_BYTES // row)
    for start in range(0, shape[0], step):
        yield start, min(shape[0], start + step)


def _read(handle, name: str, rows):
    return handle.get_tensor(name) if rows is None else handle.get_slice(name)[rows[0]:rows[1]]


def _write_shard(path: Path, names: list[str], plan: dict, a: Path, b: Path, weight: float) -> int:
    """Write one output shard tensor by tensor (grouped by the B shard they come from); returns its data bytes."""
    from safetensors import safe_open

    meta, source_a, source_b, map_b = plan["meta"], plan["source_a"], plan["source_b"], plan["map_b"]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(map_b[source_b[name]], []).append(name)
    order = [name for group in groups.values() for name in group]  # the data is written in this order
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in order:
        dtype, shape = meta[source_a[name]]
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    a_file = plan["map_a"][source_a[names[0]]]
    with open(path, "wb") as out, safe_open(a / a_file, framework="pt") as handle_a:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for b_file, group in groups.items():
            with safe_open(b / b_file, framework="pt") as handle_b:  # one B shard mapped at a time
                for name in group:
                    for rows in _slices(meta[source_a[name]][1]):
                        part_a, part_b = _read(handle_a, source_a[name], rows), _read(handle_b, source_b[name], rows)
                        merged = (weight * part_a.float() + (1 - weight) * part_b.float()).to(part_a.dtype)
                        out.write(memoryview(merged.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return offset


def merge(a, b, output, weight: float = 0.5, overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``w·A + (1 − w)·B`` (every tensor, in fp32, cast to A's dtype) with A's config and tokenizer to ``output``.

    ``a``/``b``: checkpoint directories with safetensors weights (or ``smollm2-135m``). Returns a summary (also written
    to ``output/merge.json``). Refuses, with one line naming the problem, different architectures, tensor names or
    shapes, GGUF files, hub ids, a weight outside [0, 1] and a non-empty ``output`` (unless ``overwrite``).
    """
    from tqdm.auto import tqdm

    started = time.time()
    if not 0.0 <= float(weight) <= 1.0:
        raise RopekitError(f"merge weight {weight} is outside [0, 1]", "pass --weight between 0 and 1 (0.5 is LongRecipe's average)")
    dir_a, dir_b = checkpoint_dir(a, "A"), checkpoint_dir(b, "B")
    out = Path(output).expanduser()
    if out.resolve() in (dir_a.resolve(), dir_b.resolve()):
        raise RopekitError(f"the output {out} is one of the inputs", "write the merged model to a new directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RopekitError(f"output directory {out} exists and is not empty", "choose a new directory or pass --overwrite")
    plan = plan_merge(dir_a, dir_b)  # every check before anything is written
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("*.safetensors")) + [out / INDEX]:
        stale.unlink(missing_ok=True)
    weight_map_out, total = {}, 0
    for file, names in tqdm(plan["shards"].items(), desc="merge", unit="shard", disable=not progress):
        total += _write_shard(out / file, names, plan, dir_a, dir_b, float(weight))
        weight_map_out.update({name: file for name in names})
    if plan["sharded"] or len(plan["shards"]) > 1:
        (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map_out}, indent=2))
    for name in MODEL_FILES:
        if (dir_a / name).is_file():
            shutil.copyfile(dir_a / name, out / name)
    if plan["untie"]:  # A tied its head, B did not: the merged head differs from the merged embedding
        config = json.loads((out / "config.json").read_text())
        config["tie_word_embeddings"] = False
        (out / "config.json").write_text(json.dumps(config, indent=2))
    summary = {"a": str(a), "b": str(b), "weight": float(weight), "formula": "w·A.float() + (1 − w)·B.float(), cast to A's dtype",
               "config_from": "A", "tensors": len(weight_map_out), "shards": len(plan["shards"]), "bytes": total,
               "untied_head": plan["untie"], "seconds": round(time.time() - started, 1)}
    (out / "merge.json").write_text(json.dumps(summary, indent=2))
    return summary
