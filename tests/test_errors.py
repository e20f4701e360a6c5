"""Every bad input gets one clear line naming the problem and the fix — never a deep traceback."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, OlmoConfig

import ropekit
from ropekit.testing import NATIVE, tiny_model


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 400, text
    return text


CASES = [
    ("unknown method", lambda m: ropekit.extend(m, "superrope", target_length="32k"), "unknown method 'superrope'"),
    ("factor below one", lambda m: ropekit.extend(m, "yarn", factor=0.5), "must be > 1"),
    ("factor equal one", lambda m: ropekit.extend(m, "linear", factor=1), "must be > 1"),
    ("target not beyond native", lambda m: ropekit.extend(m, "yarn", target_length=NATIVE), "not beyond the model's native length"),
    ("target shorter than native", lambda m: ropekit.extend(m, "eabf", target_length=16), "not beyond"),
    ("unknown parameter", lambda m: ropekit.extend(m, "yarn", target_length=256, betafast=8), "unknown parameter 'betafast'"),
    ("parameter of another method", lambda m: ropekit.extend(m, "linear", target_length=256, layers="all"), "unknown parameter 'layers'"),
    ("bad length text", lambda m: ropekit.extend(m, "yarn", target_length="32q"), "is not a length"),
    ("negative length", lambda m: ropekit.extend(m, "yarn", target_length=-5), "must be positive"),
    ("not a number", lambda m: ropekit.extend(m, "yarn", target_length=256, beta_fast="fast"), "beta_fast"),
    ("bad layer spec", lambda m: ropekit.extend(m, "eabf", layers="two-three"), "layers"),
    ("layer out of range", lambda m: ropekit.extend(m, "eabf", layers="2-40"), "does not exist"),
    ("factor contradicts target", lambda m: ropekit.extend(m, "yarn", target_length=256, factor=2), "disagrees"),
    ("no target nor factor", lambda m: ropekit.extend(m, "yarn"), "needs a target length or a factor"),
    ("two frequency methods", lambda m: ropekit.extend(m, "yarn+ntk", target_length=256), "both set RoPE frequencies"),
    ("self_extend with yarn", lambda m: ropekit.extend(m, "self_extend+yarn", target_length=256), "cannot be combined"),
    ("theta and theta_factor", lambda m: ropekit.extend(m, "abf", theta=1e6, theta_factor=10), "not both"),
    ("theta below original", lambda m: ropekit.extend(m, "abf", theta=100.0), "must exceed"),
    ("longrope without factors", lambda m: ropekit.extend(m, "longrope", target_length=256), "needs long_factor"),
    ("longrope wrong length", lambda m: ropekit.extend(m, "longrope", target_length=256, long_factor="[1.0, 2.0]"), "has 2 values"),
    ("longrope missing file", lambda m: ropekit.extend(m, "longrope", target_length=256, long_factor="/no/such.json"), "neither a JSON list"),
    ("self_extend group too small", lambda m: ropekit.extend(m, "self_extend", target_length=1024, group=2), "beyond the native"),
    ("bad bool", lambda m: ropekit.extend(m, "yarn", target_length=256, truncate="maybe"), "true/false"),
]


@pytest.mark.parametrize("name,call,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_extend_inputs(name, call, expected):
    with pytest.raises(ropekit.RopekitError) as info:
        call(tiny_model("llama"))
    assert expected in one_line(info.value)
    assert "Fix:" in str(info.value)


def test_already_extended():
    model = ropekit.extend(tiny_model(), "yarn", target_length=256)
    with pytest.raises(ropekit.RopekitError, match="already extended"):
        ropekit.extend(model, "eabf")


def test_model_without_rope():
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=64))
    with pytest.raises(ropekit.RopekitError) as info:
        ropekit.extend(gpt2, "yarn", target_length=256)
    assert "no rotary position embedding" in one_line(info.value)


def test_untested_architecture_needs_opt_in():
    olmo = AutoModelForCausalLM.from_config(OlmoConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                                       num_attention_heads=2, vocab_size=64, max_position_embeddings=64))
    with pytest.raises(ropekit.RopekitError) as info:
        ropekit.extend(olmo, "yarn", target_length=256)
    assert "not supported" in one_line(info.value) and "allow_untested" in str(info.value)
    ropekit.extend(olmo, "yarn", target_length=256, allow_untested=True)
    assert olmo(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


def test_extension_of_scaled_rope_refused():
    model = tiny_model("llama", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(ropekit.RopekitError, match="already uses rope_type 'linear'"):
        ropekit.extend(model, "yarn", target_length=256)


@pytest.mark.parametrize("path,expected", [
    ("/no/such/model/dir", "no such model file or directory"),
    ("./missing-model", "no such model file or directory"),
    ("missing.gguf", "no such model file or directory"),
])
def test_unreadable_paths(path, expected):
    with pytest.raises(ropekit.RopekitError) as info:
        ropekit.load_model(path)
    assert expected in one_line(info.value)


def test_directory_without_config_or_safetensors(tmp_path):
    with pytest.raises(ropekit.RopekitError, match="no config.json"):
        ropekit.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ropekit.RopekitError, match="never pickled"):
        ropekit.load_model(tmp_path)


def test_file_that_is_not_a_model(tmp_path):
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(ropekit.RopekitError, match="not a .gguf"):
        ropekit.load_model(tmp_path / "weights.txt")


def test_corrupt_gguf(tmp_path):
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ropekit.RopekitError) as info:
        ropekit.load_model(tmp_path / "broken.gguf")
    assert "could not load the GGUF" in one_line(info.value)


def test_bad_dtype_and_device():
    with pytest.raises(ropekit.RopekitError, match="unknown dtype"):
        ropekit.load_model("smollm2-135m", dtype="float8")
    with pytest.raises(ropekit.RopekitError, match="unknown device"):
        ropekit.models.pick_device("tpu9")


def test_retrieval_keys_from_a_truncated_corpus_are_refused_in_one_line(monkeypatch):
    """A damaged corpus cache (a few words) names the folder to delete instead of an IndexError inside the tokenizer."""
    from ropekit.errors import RopekitError
    from ropekit.eval import retrieval
    from ropekit.testing import tiny_tokenizer

    monkeypatch.setattr(retrieval, "natural_text", lambda source: "To be, or not to be.")
    monkeypatch.setattr(retrieval, "_KEY_POOLS", {})
    with pytest.raises(RopekitError) as err:
        retrieval.kv_sample(tiny_tokenizer(), 700, [0.5], __import__("random").Random(0))
    assert "distinct words" in one_line(err.value) and "ROPEKIT_CACHE" in str(err.value)
