"""Frequency-side methods equal a model configured directly with transformers' own rope parameters."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import ropekit
from ropekit.testing import NATIVE, random_ids, tiny_model

from conftest import rel_err

TARGET = 4 * NATIVE
HEAD_DIM = 16
LONG_FACTOR = [1.0 + 0.5 * i for i in range(HEAD_DIM // 2)]

# What transformers itself should be configured with, written out by hand (not by ropekit).
EXPECTED = {
    "linear": ({"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}, TARGET, {}),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0, "rope_theta": 1e4}, NATIVE, {}),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": NATIVE, "rope_theta": 1e4}, TARGET, {}),
    "llama3": ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": NATIVE, "rope_theta": 1e4}, TARGET, {}),
    "longrope": ({"rope_type": "longrope", "factor": 4.0, "long_factor": LONG_FACTOR, "short_factor": [1.0] * (HEAD_DIM // 2),
                  "original_max_position_embeddings": NATIVE, "rope_theta": 1e4}, TARGET, {"long_factor": LONG_FACTOR}),
    "ntk": ({"rope_type": "default", "rope_theta": 1e4 * 4.0 ** (HEAD_DIM / (HEAD_DIM - 2))}, TARGET, {}),
    "abf": ({"rope_type": "default", "rope_theta": 5e5}, TARGET, {}),
}


def reference_model(base, rope_parameters, max_positions):
    config = copy.deepcopy(base.config)
    config.rope_parameters = dict(rope_parameters)
    config.max_position_embeddings = max_positions
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(base.state_dict())
    return model.eval()


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_logits_equal_transformers_configured_directly(method):
    rope, max_positions, params = EXPECTED[method]
    base = tiny_model("llama")
    reference = reference_model(base, rope, max_positions)
    extended = ropekit.extend(copy.deepcopy(base), method, target_length=TARGET, **params)
    assert extended.config.max_position_embeddings == max_positions
    ids = random_ids(3 * NATIVE)  # well beyond the native window
    with torch.no_grad():
        got, want, original = extended(ids).logits, reference(ids).logits, base(ids).logits
    assert rel_err(got, want) < 1e-6
    assert rel_err(original, want) > 1e-3  # the method really changed something


@pytest.mark.parametrize("method", ["linear", "yarn", "llama3", "longrope", "dynamic"])
def test_inv_freq_is_transformers_own(method):
    rope, max_positions, params = EXPECTED[method]
    model = ropekit.extend(tiny_model("llama"), method, target_length=TARGET, **params)
    config = copy.deepcopy(model.config)
    want, scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu")
    rotary = model.model.rotary_emb
    assert torch.allclose(rotary.inv_freq, want)
    assert rotary.attention_scaling == pytest.approx(scaling)


def test_yarn_attention_factor_and_consistent_lengths():
    model = ropekit.extend(tiny_model("llama"), "yarn", factor=8)
    rope = model.config.rope_parameters
    assert rope["factor"] == 8.0 and rope["original_max_position_embeddings"] == NATIVE
    assert model.config.max_position_embeddings == 8 * NATIVE  # implicit factor == explicit factor
    assert model.model.rotary_emb.attention_scaling == pytest.approx(0.1 * math.log(8) + 1)


def test_dynamic_keeps_native_max_positions_so_it_acts():
    """transformers' dynamic type only rescales beyond max_position_embeddings: raising it would disable it."""
    base = tiny_model("llama")
    model = ropekit.extend(copy.deepcopy(base), "dynamic", target_length=TARGET)
    assert model.config.max_position_embeddings == NATIVE
    assert model.config.ropekit["target_length"] == TARGET
    ids = random_ids(3 * NATIVE)
    short = ids[:, : NATIVE // 2]
    with torch.no_grad():
        assert rel_err(model(ids).logits, base(ids).logits) > 1e-3  # rescaled beyond the window
        assert rel_err(model(short).logits, base(short).logits) < 1e-6  # untouched within it


def test_partial_rotary_dimension_used_for_ntk():
    model = ropekit.extend(tiny_model("llama"), "ntk", target_length=TARGET)
    d = HEAD_DIM
    assert model.config.rope_parameters["rope_theta"] == pytest.approx(1e4 * 4 ** (d / (d - 2)))


def test_gemma3_extends_full_attention_layers_only():
    model = ropekit.extend(tiny_model("gemma3_text"), "yarn", target_length=TARGET)
    rope = model.config.rope_parameters
    assert rope["full_attention"]["rope_type"] == "yarn"
    assert rope["sliding_attention"] == {"rope_type": "default", "rope_theta": 1e4}


def test_abf_theta_rule_and_override():
    assert ropekit.extend(tiny_model(), "abf").config.rope_parameters["rope_theta"] == 5e5
    assert ropekit.extend(tiny_model(), "abf", theta_factor=10).config.rope_parameters["rope_theta"] == 1e5
    assert ropekit.extend(tiny_model(), "eabf", theta=2e6).config.rope_parameters["rope_theta"] == 2e6
