"""ropekit merge: the formula exactly (sharded, sliced, mixed dtypes, tied heads), the merged model loads and runs,
refusals as one line, and (slow) peak memory on 8 shards of 64 MB measured in a subprocess."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ropekit
from ropekit.training import merge as merge_module
from ropekit.training.merge import merge
from ropekit.testing import save_tiny_checkpoint, tiny_model, tiny_tokenizer


def tensors(directory) -> dict:
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def expected(a: dict, b: dict, w: float) -> dict:
    return {name: (w * a[name].float() + (1 - w) * b[name].float()).to(a[name].dtype) for name in a}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    vocab = len(tiny_tokenizer())
    save_tiny_checkpoint(root / "a", vocab_size=vocab, seed=1)
    save_tiny_checkpoint(root / "b", vocab_size=vocab, seed=2)
    return root


def test_merged_tensors_equal_the_formula_and_the_model_runs(pair, tmp_path):
    summary = merge(pair / "a", pair / "b", tmp_path / "m", weight=0.3, progress=False)
    a, b, m = tensors(pair / "a"), tensors(pair / "b"), tensors(tmp_path / "m")
    assert set(m) == set(a) and summary["tensors"] == len(a)
    for name, value in expected(a, b, 0.3).items():
        assert torch.equal(m[name], value), name
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == json.loads((pair / "a" / "config.json").read_text())
    model, tokenizer = ropekit.load_model(tmp_path / "m", device="cpu")
    reference = tiny_model("llama", vocab_size=len(tiny_tokenizer()))
    reference.load_state_dict(expected(a, b, 0.3))
    ids = torch.tensor([tokenizer("Merged models run.").input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_sharded_sliced_and_mixed_dtypes(pair, tmp_path, monkeypatch):
    """A saved in bf16 over several shards, B in fp32 in one file, slices of a few rows: still the formula exactly."""
    model = tiny_model("llama", vocab_size=len(tiny_tokenizer()), seed=3).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "a16", max_shard_size="100KB")
    assert len(list((tmp_path / "a16").glob("*.safetensors"))) > 2
    monkeypatch.setattr(merge_module, "SLICE_BYTES", 1024)  # many slices per tensor
    merge(tmp_path / "a16", pair / "b", tmp_path / "m", weight=0.75, progress=False)
    a, b, m = tensors(tmp_path / "a16"), tensors(pair / "b"), tensors(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").glob("*.safetensors")) == sorted(p.name for p in (tmp_path / "a16").glob("*.safetensors"))
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(a)
    for name, value in expected(a, b, 0.75).items():
        assert m[name].dtype == torch.bfloat16 and torch.equal(m[name], value), name
    loaded, _ = ropekit.load_model(tmp_path / "m", device="cpu", dtype="float32")
    with torch.no_grad():
        assert bool(torch.isfinite(loaded(torch.tensor([[5, 6, 7]])).logits).all())


@pytest.mark.parametrize("tied_side", ["a", "b"])
def test_a_tied_head_in_one_checkpoint(pair, tmp_path, tied_side):
    vocab = len(tiny_tokenizer())
    save_tiny_checkpoint(tmp_path / "tied", vocab_size=vocab, seed=4, tie_word_embeddings=True)
    tied = tensors(tmp_path / "tied")
    assert "lm_head.weight" not in tied
    a_dir, b_dir = (tmp_path / "tied", pair / "b") if tied_side == "a" else (pair / "a", tmp_path / "tied")
    summary = merge(a_dir, b_dir, tmp_path / "m", weight=0.4, progress=False)
    a, b, m = tensors(a_dir), tensors(b_dir), tensors(tmp_path / "m")
    for side in (a, b):
        side.setdefault("lm_head.weight", side["model.embed_tokens.weight"])  # the tied head is the embedding
    for name, value in expected(a, b, 0.4).items():
        assert torch.equal(m[name], value), name
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert summary["untied_head"] == (tied_side == "a") and config["tie_word_embeddings"] is False
    model, _ = ropekit.load_model(tmp_path / "m", device="cpu")
    assert torch.equal(model.lm_head.weight, m["lm_head.weight"])


def _edited_copy(source, target, edit):
    import shutil

    shutil.copytree(source, target)
    state = load_file(target / "model.safetensors")
    edit(state)
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_refusals_are_one_line(pair, tmp_path):
    from ropekit.testing import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "qwen", "qwen2", vocab_size=len(tiny_tokenizer()))
    missing = _edited_copy(pair / "b", tmp_path / "missing", lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    shaped = _edited_copy(pair / "b", tmp_path / "shaped", lambda s: s.update({"model.norm.weight": torch.ones(65)}))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    cases = [
        ((pair / "a", tmp_path / "qwen"), "cannot merge different architectures: A is llama"),
        ((pair / "a", missing), "tensor 'model.layers.1.mlp.up_proj.weight' is in A but not in B"),
        ((missing, pair / "a"), "tensor 'model.layers.1.mlp.up_proj.weight' is in B but not in A"),
        ((pair / "a", shaped), r"tensor 'model.norm.weight' has shape \[64\] in A but \[65\] in B"),
        ((tmp_path / "model.gguf", pair / "b"), "A .* is a GGUF file"),
        ((pair / "a", "some-org/some-model"), "B 'some-org/some-model' is not a local directory"),
    ]
    for (a, b), message in cases:
        with pytest.raises(ropekit.RopekitError, match=message) as err:
            merge(a, b, tmp_path / "out", progress=False)
        assert "\n" not in str(err.value) and "Fix:" in str(err.value)
        assert not (tmp_path / "out").exists()  # nothing written before the checks pass
    with pytest.raises(ropekit.RopekitError, match=r"weight 1.5 is outside \[0, 1\]"):
        merge(pair / "a", pair / "b", tmp_path / "out", weight=1.5)
    with pytest.raises(ropekit.RopekitError, match="not empty"):
        merge(pair / "a", pair / "b", tmp_path / "full")
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_cli_merge(pair, tmp_path):
    from typer.testing import CliRunner

    from ropekit.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["merge", str(pair / "a"), str(pair / "b"), "--weight", "0.5", "-o", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "merge.json").exists()
    bad = runner.invoke(app, ["merge", str(pair / "a"), str(tmp_path / "nowhere"), "-o", str(tmp_path / "m2")])
    assert bad.exit_code == 2 and "no such model" in bad.output and "Traceback" not in bad.output


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from ropekit.training.merge import merge
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    merge(sys.argv[1], sys.argv[2], sys.argv[3], weight=0.5, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after}))
""")


def _big_checkpoint(directory, seed: int, shards: int = 8, tensors_per_shard: int = 4, rows: int = 4096, cols: int = 1024):
    """``shards`` files of ``tensors_per_shard`` fp32 [rows, cols] tensors (16 MiB each: 64 MiB per shard) and an index."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {f"model.layers.{s}.w{t}": torch.randn(rows, cols, generator=generator) for t in range(tensors_per_shard)}
        save_file(part, directory / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


@pytest.mark.slow
def test_peak_memory_is_bounded_by_two_shards(tmp_path):
    a, b = _big_checkpoint(tmp_path / "a", 1), _big_checkpoint(tmp_path / "b", 2)
    shard = max(p.stat().st_size for p in a.glob("*.safetensors"))
    assert shard >= 64 * 2**20 and len(list(a.glob("*.safetensors"))) >= 8
    script = tmp_path / "measure.py"
    script.write_text(MEMORY_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(a), str(b), str(tmp_path / "m")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    usage = json.loads(result.stdout.strip().splitlines()[-1])
    growth = (usage["after_kib"] - usage["before_kib"]) * 1024
    total = sum(p.stat().st_size for p in a.glob("*.safetensors"))
    print(f"\nmerge of 2 × {total / 2**20:.0f} MiB in 8 shards of {shard / 2**20:.0f} MiB: peak RSS growth {growth / 2**20:.0f} MiB "
          f"(bound {(2 * shard + 100 * 10**6) / 2**20:.0f} MiB)")
    assert growth <= 2 * shard + 100 * 10**6
    with safe_open(tmp_path / "m" / "model-00003-of-00008.safetensors", framework="pt") as handle:  # spot check the formula
        name = "model.layers.2.w1"
        with safe_open(a / "model-00003-of-00008.safetensors", framework="pt") as ha, safe_open(b / "model-00003-of-00008.safetensors", framework="pt") as hb:
            assert torch.equal(handle.get_tensor(name), 0.5 * ha.get_tensor(name) + 0.5 * hb.get_tensor(name))
