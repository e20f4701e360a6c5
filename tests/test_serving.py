"""Every frequency-only export's config against what vLLM accepts, read from vLLM 0.33.0's source (the PyPI wheel
vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl; vLLM does not run on this machine, so its rules are transcribed):

* vllm/model_executor/layers/rotary_embedding/__init__.py, ``get_rope``: the rope types it dispatches on, the fields
  each branch reads (``rope_parameters[...]`` raises KeyError when missing) and the optional fields it forwards.
* vllm/config/model.py, ``_get_and_verify_max_len``: the default ``max_model_len`` is ``max_position_embeddings``
  (capped by the tokenizer's ``model_max_length``), multiplied by ``factor`` unless the type is one of su, longrope,
  llama3, yarn, deepseek_yarn, deepseek_llama_scaling.
* vllm/model_executor/layers/rotary_embedding/dynamic_ntk_scaling_rope.py: one static base for the whole cache, so
  vLLM's ``dynamic`` is not transformers' (and ropekit's) length-dependent dynamic NTK.
"""

import json

import pytest

import ropekit
from ropekit.export import bundle
from ropekit.testing import NATIVE, tiny_model

TARGET = 4 * NATIVE
LONG_FACTOR = [1.0, 1.5, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0]

# get_rope in vLLM 0.33.0: rope type → (fields read unconditionally, optional fields forwarded to the rotary class)
VLLM_ROPE_TYPES = {
    "default": (set(), set()),
    "linear": ({"factor"}, set()),
    "ntk": ({"factor"}, {"mixed_b"}),
    "dynamic": ({"factor"}, {"max_trained_positions"}),  # or {"alpha"}
    "llama3": ({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}, set()),
    "yarn": ({"factor", "original_max_position_embeddings"}, {"beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate"}),
    "deepseek_yarn": ({"factor", "original_max_position_embeddings"}, {"beta_fast", "beta_slow", "mscale", "mscale_all_dim"}),
    "longrope": ({"short_factor", "long_factor", "original_max_position_embeddings"}, {"short_mscale", "long_mscale"}),
}
VLLM_COMMON_FIELDS = {"rope_type", "rope_theta", "partial_rotary_factor"}
VLLM_FACTOR_ALREADY_IN_MAX_LEN = {"su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}
# what vLLM computes from fields it does not read, equal to transformers' value only in ropekit's defaults:
# longrope's attention factor (vLLM: sqrt(1 + ln(max_pos/orig)/ln orig) from the config lengths, see
# phi3_long_rope_scaled_rope.py) and longrope's ``factor`` (vLLM: max_position_embeddings / original).
IGNORED_BUT_DERIVED = {"longrope": {"factor", "attention_factor"}}
# where vLLM runs a different model than transformers from the same config
NOT_EXACT_IN_VLLM = {"dynamic": "vLLM's dynamic NTK uses one static base (dynamic_ntk_scaling_rope.py), transformers a per-length one"}


def vllm_default_max_model_len(config: dict) -> float:
    """``_get_and_verify_max_len`` of vLLM 0.33.0 without user overrides (tokenizer model_max_length not capped here)."""
    derived = config["max_position_embeddings"]
    rope = config["rope_parameters"]
    if rope["rope_type"] not in VLLM_FACTOR_ALREADY_IN_MAX_LEN:
        derived *= rope.get("factor", 1.0)
    return derived


FREQUENCY_ONLY = [("linear", {}), ("ntk", {}), ("dynamic", {}), ("yarn", {}), ("yarn", {"attention_factor": 1.2}),
                  ("llama3", {}), ("longrope", {"long_factor": LONG_FACTOR}), ("abf", {}), ("eabf", {})]


@pytest.mark.parametrize("method,params", FREQUENCY_ONLY, ids=[f"{m}{'-' + '-'.join(p) if p else ''}" for m, p in FREQUENCY_ONLY])
def test_frequency_only_export_is_a_config_vllm_accepts(tmp_path, method, params):
    model = ropekit.extend(tiny_model("llama"), method, target_length=TARGET, **params)
    ropekit.save_model(model, None, tmp_path / "ckpt")
    directory = tmp_path / "ckpt"
    if bundle.runtime_needs(json.loads((directory / "config.json").read_text())):
        bundle.export_frequency_only(directory, tmp_path / "plain")
        directory = tmp_path / "plain"
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config  # vLLM's own Llama implementation loads it
    rope = config["rope_parameters"]
    assert rope["rope_type"] in VLLM_ROPE_TYPES, rope
    required, optional = VLLM_ROPE_TYPES[rope["rope_type"]]
    assert required <= set(rope), f"vLLM raises KeyError for missing {required - set(rope)}"
    unread = set(rope) - required - optional - VLLM_COMMON_FIELDS
    assert unread <= IGNORED_BUT_DERIVED.get(rope["rope_type"], set()), f"vLLM would ignore {unread}"
    if rope["rope_type"] == "longrope":  # ignored fields must equal what vLLM derives
        assert rope["factor"] == config["max_position_embeddings"] / rope["original_max_position_embeddings"]
        assert "attention_factor" not in rope
    # the default window vLLM serves
    expected = TARGET * rope["factor"] if rope["rope_type"] == "linear" else TARGET
    if rope["rope_type"] == "dynamic":
        assert config["max_position_embeddings"] == NATIVE  # transformers' dynamic needs the native window here
    assert vllm_default_max_model_len(config) == expected
    assert (rope["rope_type"] in NOT_EXACT_IN_VLLM) == (method == "dynamic")


def test_bundled_checkpoint_refuses_an_engine_attention_that_would_skip_the_plan(tmp_path):
    """vLLM's Transformers fallback swaps in its own attention function ("vllm", registered through AttentionInterface,
    vllm/model_executor/models/transformers/base.py). The bundled class refuses any implementation that is not one
    ropekit wraps, instead of running without the logit scale."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("serving_engine", sdpa_attention_forward)
    AttentionMaskInterface.register("serving_engine", sdpa_mask)
    ropekit.save_model(ropekit.extend(tiny_model("llama"), "eabf", target_length=TARGET), None, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="'serving_engine' would run without this checkpoint's logit_scale"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True, attn_implementation="serving_engine")
