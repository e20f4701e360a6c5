"""layers=entropy: the logit scale skips the layers whose attention entropy rises with length close to uniform,
found by a probe of the unextended model, on a tiny model whose answer is known by construction."""

import copy

import pytest
import torch

import ropekit
import ropekit.methods.entropy_probe
from ropekit.methods.entropy_probe import RISING, UNIFORM_LIKE, unscaled_layers
from ropekit.testing import NATIVE, tiny_model, tiny_tokenizer


def constructed_model(vocab_size: int):
    """Layers 0 and 2 attend uniformly (zero queries: every logit is 0, so H = ln n exactly, rising with length);
    layers 1 and 3 attend almost one-hot (queries and keys × 100: H ≈ 0 at every length)."""
    model = tiny_model("llama", vocab_size=vocab_size)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            if i in (0, 2):
                layer.self_attn.q_proj.weight.zero_()
            else:
                layer.self_attn.q_proj.weight.mul_(100.0)
                layer.self_attn.k_proj.weight.mul_(100.0)
    return model


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(" ".join(f"word{i % 53} and verse {i % 17}." for i in range(400)))
    return str(path)


@pytest.mark.parametrize("method", ["logscale", "eabf"])
def test_entropy_layers_known_by_construction(text, cache_home, method):
    tok = tiny_tokenizer()
    model = constructed_model(len(tok))
    plain = copy.deepcopy(model)
    extended = ropekit.extend(model, method, target_length=4 * NATIVE, layers="entropy", probe_text=text, tokenizer=tok)
    record = extended.config.ropekit
    assert record["attention"]["logit_scale"]["layers"] == [1, 3]
    choice = record["params"][method]["layer_choice"]
    assert choice["rule"] == "entropy" and choice["unscaled"] == [0, 2]
    assert choice["uniform_like"] == UNIFORM_LIKE and choice["rising"] == RISING
    for layer in (0, 2):  # uniform: H / ln n = 1 and H rises one-for-one with ln n
        assert choice["level"][layer] == pytest.approx(1.0, abs=1e-3) and choice["slope"][layer] == pytest.approx(1.0, abs=1e-3)
    for layer in (1, 3):
        assert choice["level"][layer] < 0.2 and abs(choice["slope"][layer]) < 0.2
    assert [w["tokens"] for w in choice["profile"]["windows"]] == [16, 32, 64]  # ¼, ½ and 1× the native window
    # the probe ran on the unextended model: the same choice as probing the plain copy directly
    assert ropekit.methods.entropy_probe.choose_unscaled_layers(plain, tok, NATIVE, text)["unscaled"] == [0, 2]


def test_entropy_choice_is_cached_and_saved_with_the_checkpoint(text, cache_home, tmp_path, monkeypatch):
    tok = tiny_tokenizer()
    model = constructed_model(len(tok))
    first = ropekit.extend(copy.deepcopy(model), "logscale", target_length=4 * NATIVE, layers="entropy", probe_text=text, tokenizer=tok)

    def no_probe(*args, **kwargs):
        raise AssertionError("the probe ran again")

    monkeypatch.setattr(ropekit.methods.entropy_probe, "layer_profile", no_probe)
    again = ropekit.extend(copy.deepcopy(model), "logscale", target_length=4 * NATIVE, layers="entropy", probe_text=text, tokenizer=tok)
    assert again.config.ropekit["attention"] == first.config.ropekit["attention"]
    ropekit.save_model(first, tok, tmp_path / "ckpt")
    loaded, _ = ropekit.load_model(tmp_path / "ckpt", device="cpu")  # restored from the record: no probe
    assert loaded.config.ropekit["params"]["logscale"]["layer_choice"]["unscaled"] == [0, 2]
    ids = torch.randint(3, 250, (1, 3 * NATIVE))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, first(ids).logits, atol=1e-5)


def test_rule_on_a_hand_made_profile():
    windows = [{"tokens": n, "uniform": u, "entropy": [0.9 * u, 0.9 * 5.0, 0.3 * u]} for n, u in ((16, 2.0), (32, 3.0), (64, 4.0))]
    choice = unscaled_layers({"windows": windows})
    assert choice["unscaled"] == [0]  # layer 1: near uniform at 64 tokens (1.125) but flat; layer 2: rising but far from uniform
    assert choice["slope"] == pytest.approx([0.9, 0.0, 0.3]) and choice["level"] == pytest.approx([0.9, 1.125, 0.3])


def test_entropy_layers_need_a_tokenizer(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(ropekit.RopekitError, match="needs its tokenizer"):
        ropekit.extend(model, "logscale", target_length=4 * NATIVE, layers="entropy")
