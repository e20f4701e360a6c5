"""Self-Extend equals an explicit reference that applies RoPE at grouped positions to the raw q/k."""

import copy

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

import ropekit
from ropekit.testing import NATIVE, random_ids, tiny_model

from conftest import rel_err

GROUP, WINDOW, TARGET = 4, 16, 3 * NATIVE
STATE = {}


def reference_self_extend(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Jin et al. 2024, Eq. 4: neighbour tokens at true distance, others at floor(i/G)+W-W/G vs floor(j/G)."""
    rotary = STATE["rotary"]
    pos = kwargs["position_ids"][0]  # one row, contiguous
    assert query.shape[2] == key.shape[2], "reference handles full forwards only"
    undo_cos, undo_sin = rotary(query, -pos[None])
    raw_q, raw_k = apply_rotary_pos_emb(query, key, undo_cos, undo_sin)  # back to pre-RoPE vectors
    q_cos, q_sin = rotary(query, (pos // GROUP + WINDOW - WINDOW // GROUP)[None])
    k_cos, k_sin = rotary(query, (pos // GROUP)[None])
    far_q, _ = apply_rotary_pos_emb(raw_q, raw_q, q_cos, q_sin)
    _, far_k = apply_rotary_pos_emb(raw_k, raw_k, k_cos, k_sin)
    n_rep = query.shape[1] // key.shape[1]
    key, far_k, value = (x.repeat_interleave(n_rep, dim=1) for x in (key, far_k, value))
    near = query @ key.transpose(2, 3)
    far = far_q @ far_k.transpose(2, 3)
    distance = pos[:, None] - pos[None, :]
    logits = torch.where(distance < WINDOW, near, far) * scaling
    logits = logits + attention_mask if attention_mask is not None else logits.masked_fill(distance < 0, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return (probs @ value).transpose(1, 2).contiguous(), probs


AttentionInterface.register("reference_self_extend", reference_self_extend)
AttentionMaskInterface.register("reference_self_extend", eager_mask)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_equals_reference(backend):
    base = tiny_model("llama", attn_implementation=backend)
    extended = ropekit.extend(copy.deepcopy(base), "self_extend", target_length=TARGET, group=GROUP, window=WINDOW)
    reference = AutoModelForCausalLM.from_config(copy.deepcopy(base.config), attn_implementation="reference_self_extend")
    reference.load_state_dict(base.state_dict())
    STATE["rotary"] = LlamaRotaryEmbedding(base.config)
    ids = random_ids(TARGET - 2)
    with torch.no_grad():
        got, want, plain = extended(ids).logits, reference.eval()(ids).logits, base(ids).logits
    assert rel_err(got, want) < 1e-5
    assert rel_err(plain, want) > 1e-3


def test_short_inputs_unchanged():
    base = tiny_model("llama")
    extended = ropekit.extend(copy.deepcopy(base), "self_extend", target_length=TARGET, group=GROUP, window=WINDOW)
    ids = random_ids(WINDOW)
    with torch.no_grad():
        assert rel_err(extended(ids).logits, base(ids).logits) < 1e-5


def test_kv_cache_equals_full_forward():
    model = ropekit.extend(tiny_model("llama"), "self_extend", target_length=TARGET, group=GROUP, window=WINDOW)
    prompt = random_ids(2 * NATIVE)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)
        full = model(out).logits
    assert torch.equal(full[0, prompt.shape[1] - 1 : -1].argmax(-1), out[0, prompt.shape[1]:])


def test_left_padding():
    model = ropekit.extend(tiny_model("llama"), "self_extend", target_length=TARGET, group=GROUP, window=WINDOW)
    long_row, short_row = random_ids(2 * NATIVE + 20, seed=1)[0], random_ids(2 * NATIVE, seed=2)[0]
    pad = long_row.numel() - short_row.numel()
    ids = torch.stack([long_row, torch.cat([torch.zeros(pad, dtype=torch.long), short_row])])
    mask = (torch.arange(ids.shape[1]) >= torch.tensor([[0], [pad]])).long()
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
        single = model.generate(short_row[None], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(batched[1, ids.shape[1]:], single[0, short_row.numel():])


def test_default_group_keeps_target_inside_native_window():
    model = ropekit.extend(tiny_model("llama"), "self_extend", target_length=16 * NATIVE)
    plan = model.config.ropekit["attention"]["self_extend"]
    assert plan["window"] == NATIVE // 4
    top = (16 * NATIVE - 1) // plan["group"] + plan["window"] - plan["window"] / plan["group"]
    assert top <= NATIVE - 1
    smaller = plan["group"] - 1
    assert (16 * NATIVE - 1) // smaller + plan["window"] - plan["window"] / smaller > NATIVE - 1  # minimal


def test_packed_rows_rejected():
    model = ropekit.extend(tiny_model("llama"), "self_extend", target_length=TARGET, group=GROUP, window=WINDOW)
    positions = torch.cat([torch.arange(40), torch.arange(40)])[None]
    with pytest.raises(ropekit.RopekitError, match="contiguous positions"):
        model(random_ids(80), position_ids=positions, use_cache=False)
