"""The entropy-aware logit scale equals an explicit eager reference that multiplies each query row's logits by t_i."""

import copy
import math

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import ropekit
from ropekit.eval.scoring import cache_keyword
from ropekit.testing import NATIVE, random_ids, tiny_model

from conftest import rel_err

TARGET = 4 * NATIVE
REFERENCE = {"layers": set(), "c": NATIVE}


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """logits_ij = t_i · (q_i·k_j)·scaling, with t_i = max(1, ln(p_i+1)/ln c) — written from the paper, not from ropekit."""
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    if module.layer_idx in REFERENCE["layers"]:
        positions = kwargs["position_ids"].double()
        t = torch.tensor([[max(1.0, math.log(p + 1) / math.log(REFERENCE["c"])) for p in row] for row in positions.tolist()])
        logits = logits * t[:, None, :, None].to(logits.dtype)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        logits = logits + attention_mask
    probs = torch.softmax(logits.float(), dim=-1).to(value.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register("reference_logit_scale", reference_attention)
AttentionMaskInterface.register("reference_logit_scale", eager_mask)


def reference_for(extended, base):
    """Same weights and frequencies as ``extended`` (plain transformers), attention = the explicit reference."""
    config = copy.deepcopy(extended.config)
    del config.ropekit
    model = AutoModelForCausalLM.from_config(config, attn_implementation="reference_logit_scale")
    model.load_state_dict(base.state_dict())
    REFERENCE["layers"] = set(extended.config.ropekit["attention"]["logit_scale"]["layers"])
    REFERENCE["c"] = extended.config.ropekit["attention"]["logit_scale"]["scale_length"]
    return model.eval()


def test_scale_values_match_the_paper():
    t = ropekit.methods.runtime.logit_scale(torch.tensor([0, 4095, 8191, 16383, 32767]), 4096)
    assert t.tolist() == pytest.approx([1.0, 1.0, 1.0833333, 1.1666667, 1.25], rel=1e-6)
    assert t.dtype == torch.float32


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("method,params", [("eabf", {}), ("eabf", {"layers": "all"}), ("yarn+logscale", {}), ("logscale", {"layers": "1,3"})])
def test_equals_explicit_reference(backend, method, params):
    base = tiny_model("llama", attn_implementation=backend)
    extended = ropekit.extend(copy.deepcopy(base), method, target_length=TARGET, **params)
    assert extended.config._attn_implementation == backend
    reference = reference_for(extended, base)
    ids = random_ids(TARGET - 10, batch=2)
    with torch.no_grad():
        got, want = extended(ids).logits, reference(ids).logits
        unscaled = copy.deepcopy(extended)
        unscaled.config.ropekit = {**unscaled.config.ropekit, "attention": {}}
        plain = unscaled(ids).logits
    assert rel_err(got, want) < 1e-5
    assert rel_err(plain, want) > 1e-3  # the scale changes the output, so the comparison can fail


def test_layers_0_and_1_unscaled_by_default():
    base = tiny_model("llama")
    eabf = ropekit.extend(copy.deepcopy(base), "eabf", target_length=TARGET)
    abf = ropekit.extend(copy.deepcopy(base), "abf", target_length=TARGET)
    assert eabf.config.ropekit["attention"]["logit_scale"]["layers"] == [2, 3]
    ids = random_ids(TARGET - 1)
    with torch.no_grad():
        h_eabf = eabf(ids, output_hidden_states=True).hidden_states
        h_abf = abf(ids, output_hidden_states=True).hidden_states
    # hidden_states[k] is the output of layer k-1
    assert torch.equal(h_eabf[1], h_abf[1]) and torch.equal(h_eabf[2], h_abf[2])
    assert rel_err(h_eabf[3], h_abf[3]) > 1e-4


def test_within_native_window_nothing_changes():
    base = tiny_model("llama")
    eabf = ropekit.extend(copy.deepcopy(base), "eabf", target_length=TARGET)
    abf = ropekit.extend(copy.deepcopy(base), "abf", target_length=TARGET)
    ids = random_ids(NATIVE)  # positions 0..c-1 → t = 1 everywhere
    with torch.no_grad():
        assert rel_err(eabf(ids).logits, abf(ids).logits) < 1e-6


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_kv_cache_greedy_equals_full_forward(backend):
    model = ropekit.extend(tiny_model("llama", attn_implementation=backend), "eabf", target_length=TARGET)
    prompt = random_ids(2 * NATIVE + 5)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=40, do_sample=False, use_cache=True, pad_token_id=0)
        full = model(out).logits
    new = out[0, prompt.shape[1]:]
    assert torch.equal(full[0, prompt.shape[1] - 1 : -1].argmax(-1), new)
    # and cached step logits equal the full forward's
    with torch.no_grad():
        first = model(out[:, :-1], use_cache=True)
        step = model(out[:, -1:], use_cache=True, **cache_keyword(model, first.past_key_values)).logits[0, -1]
    assert rel_err(step, full[0, -1]) < 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_left_padded_batch_equals_unbatched_rows(backend):
    model = ropekit.extend(tiny_model("llama", attn_implementation=backend), "eabf", target_length=TARGET)
    long_row, short_row = random_ids(3 * NATIVE, seed=1)[0], random_ids(2 * NATIVE, seed=2)[0]
    pad = long_row.numel() - short_row.numel()
    ids = torch.stack([long_row, torch.cat([torch.zeros(pad, dtype=torch.long), short_row])])
    mask = torch.stack([torch.ones_like(long_row), torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones_like(short_row)])])
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
        for row, unpadded in enumerate([long_row, short_row]):
            single = model.generate(unpadded[None], max_new_tokens=12, do_sample=False, pad_token_id=0)
            assert torch.equal(batched[row, ids.shape[1]:], single[0, unpadded.numel():])
        # logits too: position ids from the mask, as generate computes them
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(ids, attention_mask=mask, position_ids=positions).logits
        alone = model(short_row[None]).logits
    assert rel_err(logits[1, pad:], alone[0]) < 1e-5


def test_packed_sequences_with_position_resets_equal_separate_documents():
    model = ropekit.extend(tiny_model("llama"), "eabf", target_length=TARGET)
    first, second = random_ids(2 * NATIVE, seed=3), random_ids(3 * NATIVE, seed=4)
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(first.shape[1]), torch.arange(second.shape[1])])[None]
    with torch.no_grad():
        logits = model(packed, position_ids=positions, use_cache=False).logits  # packing is a training-time format
        want_first, want_second = model(first).logits, model(second).logits
    assert rel_err(logits[:, : first.shape[1]], want_first) < 1e-5
    assert rel_err(logits[:, first.shape[1]:], want_second) < 1e-5


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"])
def test_every_architecture_equals_reference(model_type):
    base = tiny_model(model_type, attn_implementation="eager")
    extended = ropekit.extend(copy.deepcopy(base), "eabf", target_length=TARGET)
    reference = reference_for(extended, base)
    ids = random_ids(TARGET - 1)
    with torch.no_grad():
        assert rel_err(extended(ids).logits, reference(ids).logits) < 1e-5
    if model_type in ("gemma2", "gemma3_text"):  # sliding-window layers are left unscaled by 'auto'
        assert extended.config.ropekit["attention"]["logit_scale"]["layers"] == [3]
