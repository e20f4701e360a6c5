"""GGUF export → ropekit.load_model gives the source model's logits; refusals name what would be lost; the file equals
what llama.cpp's own converter writes (slow, SmolLM2)."""

import copy
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import ropekit
from ropekit.export.gguf import PROBE, detect_pre_tokenizer, export_gguf, permute_for_llama_cpp
from ropekit.export.gguf_rope import read_gguf_rope, rope_from_gguf, rope_to_gguf
from ropekit.testing import NATIVE, VOCAB, _bytes_to_unicode, random_ids, tiny_model

from conftest import rel_err

gguf = pytest.importorskip("gguf")
TARGET = 4 * NATIVE


def bpe_tokenizer():
    """The byte-level test tokenizer plus three merges (llama.cpp needs BPE merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)} | {"<pad>": 256, "<s>": 257, "</s>": 258, "th": 259, "the": 260, "Ġthe": 261}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("t", "h"), ("th", "e"), ("Ġ", "the")]))
    backend.add_special_tokens(["<pad>", "<s>", "</s>"])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    return tokenizer


def _checkpoint(tmp_path, method, model_type="llama", **params):
    model = tiny_model(model_type, vocab_size=VOCAB + 3)
    if method != "none":
        ropekit.extend(model, method, target_length=TARGET, **params)
    ropekit.save_model(model, bpe_tokenizer(), tmp_path / method)
    return model, tmp_path / method


def _rounded_to_f16(model):
    """The oracle for an f16 file: the same model with every ≥2-D weight except norms rounded to fp16."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if param.dim() >= 2:
                param.copy_(param.half().float())
    return rounded


@pytest.mark.parametrize("method", ["linear", "yarn", "abf", "ntk", "llama3", "none"])
def test_export_then_load_model_gives_the_same_logits(tmp_path, method):
    model, directory = _checkpoint(tmp_path, method)
    ids = random_ids(TARGET - 6)
    with torch.no_grad():
        want = model(ids).logits
        for dtype, oracle in (("f32", model), ("f16", _rounded_to_f16(model))):
            summary = export_gguf(directory, tmp_path / f"{method}-{dtype}.gguf", dtype=dtype)
            loaded, tokenizer = ropekit.load_model(tmp_path / f"{method}-{dtype}.gguf", device="cpu")
            got = loaded(ids).logits
            assert rel_err(got, oracle(ids).logits) <= 1e-5, (method, dtype)
            if dtype == "f32":
                assert rel_err(got, want) <= 1e-5
            assert loaded.config.max_position_embeddings == model.config.max_position_embeddings
    assert summary["context_length"] == model.config.max_position_embeddings
    text = "the cat, the 33 dogs"
    assert tokenizer(text)["input_ids"] == bpe_tokenizer()(text)["input_ids"]
    if method != "none":  # the scaling changes the model, so the comparison can fail
        plain = tiny_model("llama", vocab_size=VOCAB + 3)
        with torch.no_grad():
            assert rel_err(plain(ids).logits, want) > 1e-3


def test_abf_loads_exactly_in_plain_transformers_too_but_yarn_does_not(tmp_path):
    """transformers' own GGUF loader keeps rope.freq_base (abf is exact) and drops rope scaling (yarn is not)."""
    for method, exact in (("abf", True), ("yarn", False)):
        model, directory = _checkpoint(tmp_path, method)
        export_gguf(directory, tmp_path / f"{method}.gguf", dtype="f32")
        plain = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"{method}.gguf").eval()
        ids = random_ids(TARGET - 6)
        with torch.no_grad():
            err = rel_err(plain(ids).logits, model(ids).logits)
        assert (err <= 1e-5) == exact, (method, err)


def test_gguf_keys_and_layout(tmp_path):
    model, directory = _checkpoint(tmp_path, "yarn")
    export_gguf(directory, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.context_length"] == TARGET and fields["llama.rope.freq_base"] == 10000.0
    assert fields["llama.rope.scaling.type"] == "yarn" and fields["llama.rope.scaling.factor"] == 4.0
    assert fields["llama.rope.scaling.original_context_length"] == NATIVE
    assert "llama.rope.scaling.attn_factor" not in fields  # default attention factor: llama.cpp computes 1 + 0.1 ln s itself
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] in ("smollm", "gpt-2")
    assert fields["tokenizer.ggml.merges"] == ["t h", "th e", "Ġ the"]
    assert fields["tokenizer.ggml.bos_token_id"] == 257 and "<|" in fields["tokenizer.chat_template"]
    assert json.loads(fields["ropekit.record"])["method"] == "yarn"
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    q = torch.from_numpy(np.array(tensors["blk.1.attn_q.weight"].data, dtype=np.float32))
    want = permute_for_llama_cpp(model.model.layers[1].self_attn.q_proj.weight.detach(), model.config.num_attention_heads)
    assert torch.equal(q, want.half().float())
    # the permutation pairs dimension i with i + head_dim/2 (rotate-half) as neighbours (llama.cpp's interleaved pairs)
    rows = permute_for_llama_cpp(torch.arange(16.0)[:, None], 1)[:, 0].tolist()
    assert rows == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]


def test_yarn_attention_factor_follows_llama_cpp_convention(tmp_path):
    """llama.cpp multiplies rope.scaling.attn_factor by 1 + 0.1·ln s itself: ropekit writes A / (1 + 0.1·ln s)."""
    model, directory = _checkpoint(tmp_path, "yarn", attention_factor=1.5)
    export_gguf(directory, tmp_path / "y.gguf", dtype="f32")
    fields = {k: f.contents() for k, f in gguf.GGUFReader(str(tmp_path / "y.gguf")).fields.items()}
    assert fields["llama.rope.scaling.attn_factor"] == pytest.approx(1.5 / (1 + 0.1 * math.log(4.0)), rel=1e-6)
    loaded, _ = ropekit.load_model(tmp_path / "y.gguf", device="cpu")
    assert loaded.config.rope_parameters["attention_factor"] == pytest.approx(1.5, rel=1e-6)
    ids = random_ids(TARGET - 6)
    with torch.no_grad():
        assert rel_err(loaded(ids).logits, model(ids).logits) <= 1e-5


@pytest.mark.parametrize("method,params,lost", [
    ("eabf", {}, "logit scale"), ("logscale", {}, "logit scale"), ("self_extend", {"group": 8, "window": 16}, "Self-Extend"),
    ("dynamic", {}, "dynamic NTK"), ("yarn", {"truncate": False}, "truncate"),
    ("longrope", {"long_factor": [1.0, 1.5, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]}, "LongRoPE"),
])
def test_refuses_what_llama_cpp_cannot_run_in_one_line(tmp_path, method, params, lost):
    _, directory = _checkpoint(tmp_path, method, **params)
    with pytest.raises(ropekit.RopekitError, match=lost) as err:
        export_gguf(directory, tmp_path / "x.gguf")
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))


def test_reader_refuses_what_transformers_cannot_express():
    with pytest.raises(ropekit.RopekitError, match="longrope"):
        rope_from_gguf({"rope.freq_base": 1e4, "rope.scaling.type": "longrope", "rope.scaling.factor": 4.0}, None, 4096)
    with pytest.raises(ropekit.RopekitError, match="extrapolation"):
        rope_from_gguf({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0, "rope.scaling.yarn_ext_factor": 0.5}, None, 4096)
    yarn = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 1024,
            "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.3}
    keys, _ = rope_to_gguf(yarn, 64)
    back = rope_from_gguf(keys, None, 4096)
    assert back.pop("attention_factor") == pytest.approx(1.3) and back == {k: v for k, v in yarn.items() if k != "attention_factor"}


def test_reading_a_llama_cpp_style_yarn_file(tmp_path):
    """A GGUF written by another tool with YaRN keys loads with its scaling (transformers alone would drop it)."""
    model, directory = _checkpoint(tmp_path, "yarn")
    export_gguf(directory, tmp_path / "m.gguf", dtype="f32")
    info = read_gguf_rope(tmp_path / "m.gguf")
    assert info["rope_parameters"]["rope_type"] == "yarn" and info["context_length"] == TARGET


def test_pre_tokenizer_detection_checks_behaviour():
    tokenizer = bpe_tokenizer()
    assert detect_pre_tokenizer(tokenizer) in ("smollm", "gpt-2")
    assert any(ch.isdigit() for ch in PROBE) and "\n" in PROBE


def test_export_cli(tmp_path):
    from typer.testing import CliRunner

    from ropekit.cli import app

    _, directory = _checkpoint(tmp_path, "linear")
    result = CliRunner().invoke(app, ["export", str(directory), "--gguf", str(tmp_path / "m.gguf"), "--dtype", "f32"])
    assert result.exit_code == 0, result.output
    assert "context=256" in result.output and (tmp_path / "m.gguf").is_file()
    result = CliRunner().invoke(app, ["export", str(directory), "--gguf", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2 and "exists" in result.output
    _, eabf = _checkpoint(tmp_path, "eabf")
    result = CliRunner().invoke(app, ["export", str(eabf), "--gguf", str(tmp_path / "e.gguf")])
    assert result.exit_code == 2 and "logit scale" in result.output and "--frequency-only" in result.output


# ----------------------------------------------------------------------------------------------------------------------
# SmolLM2 (slow): logits, and an independent check against llama.cpp's own converter

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"


@pytest.fixture(scope="module")
def smollm2_checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smol")
    out = {}
    for method in ("linear", "yarn", "abf"):
        model, tokenizer = ropekit.load_model("smollm2-135m", device="cpu", dtype="float32")
        ropekit.extend(model, method, target_length="16k")
        ropekit.save_model(model, tokenizer, tmp / method)
        out[method] = tmp / method
        del model
    return tmp, out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["yarn", "abf"])  # linear: the tiny models' test above and the converter test below
def test_smollm2_export_then_load_model(smollm2_checkpoints, method):
    tmp, dirs = smollm2_checkpoints
    model, tokenizer = ropekit.load_model(dirs[method], device="cpu")
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog. " * 80)["input_ids"][:700]])
    with torch.no_grad():
        want = model(ids).logits
        for dtype in ("f32", "f16") if method == "yarn" else ("f32",):  # f16 rounding is method-independent
            export_gguf(dirs[method], tmp / f"{method}-{dtype}.gguf", dtype=dtype)
            loaded, _ = ropekit.load_model(tmp / f"{method}-{dtype}.gguf", device="cpu")
            oracle = want if dtype == "f32" else _rounded_to_f16(model)(ids).logits
            assert rel_err(loaded(ids).logits, oracle) <= 1e-5, (method, dtype)
            del loaded
            if dtype == "f16":
                (tmp / f"{method}-{dtype}.gguf").unlink()
        if method == "abf":  # plain transformers' gguf_file= is exact for abf
            plain = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=f"{method}-f32.gguf").eval()
            assert rel_err(plain(ids).logits, want) <= 1e-5


@pytest.fixture(scope="module")
def llama_cpp_converter(tmp_path_factory):
    """llama.cpp's convert_hf_to_gguf.py from the llama-cpp-python sdist (downloaded, never installed or committed)."""
    pytest.importorskip("sentencepiece", reason="llama.cpp's converter imports sentencepiece (pip install sentencepiece)")
    tmp = tmp_path_factory.mktemp("llama-cpp")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(tmp),
                           LLAMA_CPP_SDIST], capture_output=True, text=True, timeout=900)
    sdists = list(tmp.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not sdists:
        pytest.skip(f"could not download the {LLAMA_CPP_SDIST} sdist from the package index: {(done.stderr or '').strip()[-200:]}")
    with tarfile.open(sdists[0]) as archive:
        members = [m for m in archive.getmembers() if "/vendor/llama.cpp/" in m.name
                   and ("/conversion/" in m.name or "/gguf-py/" in m.name or m.name.endswith("/convert_hf_to_gguf.py"))]
        archive.extractall(tmp, members=members, filter="data")
    return next(tmp.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))


def _fields(path):
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear", "yarn"])
def test_smollm2_file_equals_llama_cpp_converter_output(smollm2_checkpoints, llama_cpp_converter, method):
    tmp, dirs = smollm2_checkpoints
    ours, theirs = tmp / f"{method}-ours.gguf", tmp / f"{method}-llama-cpp.gguf"
    export_gguf(dirs[method], ours, dtype="f32")
    done = subprocess.run([sys.executable, str(llama_cpp_converter), str(dirs[method]), "--outfile", str(theirs), "--outtype", "f32"],
                          capture_output=True, text=True, timeout=900, cwd=llama_cpp_converter.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    our_keys, our_tensors = _fields(ours)
    their_keys, their_tensors = _fields(theirs)
    # every architecture, context, rope and tokenizer key is identical …
    compared = [k for k in their_keys if k.startswith(("llama.", "tokenizer.")) or k in ("general.architecture", "general.file_type")]
    assert any(k.startswith("llama.rope.scaling.") for k in compared)
    for key in compared:
        assert our_keys.get(key) == their_keys[key], key
    # … and ropekit adds only its provenance record (general.name/size_label are cosmetic and differ by design)
    extra = {k for k in our_keys if k.startswith(("llama.", "tokenizer.")) and k not in their_keys}
    assert extra == set()
    assert set(our_tensors) == set(their_tensors)
    for name, tensor in their_tensors.items():
        mine = our_tensors[name]
        assert list(mine.shape) == list(tensor.shape) and mine.tensor_type == tensor.tensor_type, name
        assert np.array_equal(np.asarray(mine.data), np.asarray(tensor.data)), name
    ours.unlink()
    theirs.unlink()
