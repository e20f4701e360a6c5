"""LongLoRA's S²-Attn: the function against an explicit masked softmax built from the definition, the border builder,
the training context inside ropekit's attention wrapper, and the one-line refusals."""

import copy
import logging
import math

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import ropekit
from ropekit.eval.scoring import cache_keyword
from ropekit.methods.s2_attention import (S2Training, check_model, check_options, group_borders, group_size_for, s2_borders,
                              s2_training, segments_from_mask)
from ropekit.testing import NATIVE, random_ids, tiny_model



def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|, in float64 (so the float64 tolerance of 1e-10 is meaningful)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ----------------------------------------------------------------------------------------------------------------------
# The definition, written independently of ropekit: a group id per token and head half.


def group_ids(seq: int, group: int, shifted: bool) -> torch.Tensor:
    t = torch.arange(seq)
    if not shifted:
        return t // group
    s = group // 2
    return torch.where(t < s, 0, (t - s) // group + 1)


def s2_mask(lengths: list[int], seq: int, heads: int, groups: list[int]) -> torch.Tensor:
    """Boolean ``[B, H, S, S]``: i may attend to j iff j ≤ i, both real, and same group in the head's half."""
    rows = []
    t = torch.arange(seq)
    for length, group in zip(lengths, groups):
        real = t < length
        per_head = []
        for h in range(heads):
            g = group_ids(seq, group, shifted=h >= heads // 2)
            per_head.append((g[:, None] == g[None, :]) & (t[None, :] <= t[:, None]) & real[:, None] & real[None, :])
        rows.append(torch.stack(per_head))
    return torch.stack(rows)


def masked_attention(q, k, v, mask, scale):
    """softmax(q·kᵀ·scale masked) · v, fully masked rows → 0; keys/values repeated for grouped-query heads."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.where(mask.any(-1, keepdim=True), probs, torch.zeros_like(probs))
    return probs @ v


def qkv(batch, heads, kv_heads, seq, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda h: (torch.randn(batch, h, seq, dim, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    return make(heads), make(kv_heads), make(kv_heads)


CASES = [  # heads, kv heads, seq, group, lengths
    (4, 4, 64, 16, None),  # equal heads, length a multiple of G
    (8, 2, 64, 16, None),  # grouped-query heads, halves aligned with the key/value groups
    (9, 3, 60, 16, None),  # SmolLM2's 9/3 heads (the halves split a key/value group); length not a multiple of G
    (6, 3, 50, 12, [50, 37]),  # padded rows of different lengths
    (4, 2, 48, 7, [48, 20, 3]),  # odd G (s = 3), a row shorter than half a group
    (2, 1, 33, 2, [33, 0]),  # smallest G; an empty row
]


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("heads,kv_heads,seq,group,lengths", CASES)
def test_equals_explicit_masked_softmax_in_outputs_and_gradients(dtype, tolerance, heads, kv_heads, seq, group, lengths):
    batch = len(lengths) if lengths else 2
    q, k, v = qkv(batch, heads, kv_heads, seq, 16, dtype)
    rows = lengths or [seq] * batch
    scale = 0.3
    weight = torch.randn(batch, heads, seq, 16, dtype=torch.float64)
    out = ropekit.s2_attention(q, k, v, group, lengths=torch.tensor(lengths) if lengths else None, scale=scale)
    assert out.dtype == dtype and out.shape == q.shape
    (out.double() * weight).sum().backward()
    got_grads = [x.grad.clone() for x in (q, k, v)]

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = masked_attention(q64, k64, v64, s2_mask(rows, seq, heads, [group] * batch), scale)
    (want * weight).sum().backward()
    assert rel_err(out, want) < tolerance
    for got, ref in zip(got_grads, (q64.grad, k64.grad, v64.grad)):
        assert torch.isfinite(got).all()
        assert rel_err(got, ref) < tolerance
    for b, n in enumerate(rows):  # padding: exactly zero out, zero gradient
        assert torch.equal(out[b, :, n:], torch.zeros_like(out[b, :, n:]))
        assert torch.equal(got_grads[0][b, :, n:], torch.zeros_like(got_grads[0][b, :, n:]))
        assert torch.equal(got_grads[1][b, :, n:], torch.zeros_like(got_grads[1][b, :, n:]))


def test_the_oracle_can_fail():
    """Full causal attention and an unshifted-only grouping both differ from S²-Attn (so the oracle discriminates)."""
    q, k, v = qkv(1, 4, 2, 64, 16, torch.float64)
    out = ropekit.s2_attention(q, k, v, 16)
    full = masked_attention(q, k, v, torch.ones(64, 64, dtype=torch.bool).tril()[None, None].expand(1, 4, 64, 64), 0.25)
    unshifted = masked_attention(q, k, v, s2_mask([64], 64, 4, [16]) & s2_mask([64], 64, 4, [16])[:, :1], 0.25)
    assert rel_err(out, full) > 1e-2 and rel_err(out, unshifted) > 1e-2


def test_border_builder_matches_the_definition():
    assert group_borders(16, 4) == [0, 4, 8, 12, 16]
    assert s2_borders(16, 4) == ([0, 4, 8, 12, 16], [0, 2, 6, 10, 14, 16])  # half-size groups at both ends
    assert s2_borders(8192, 2048)[1] == [0, 1024, 3072, 5120, 7168, 8192]  # the reference's cu_seqlens for one row
    assert s2_borders(10, 4) == ([0, 4, 8, 10], [0, 2, 6, 10])  # cut off at the length
    assert s2_borders(1, 4) == ([0, 1], [0, 1]) and s2_borders(0, 4) == ([0], [0])
    for length in range(1, 60):
        for group in range(2, 20):
            for shifted, borders in zip((False, True), s2_borders(length, group)):
                ids = group_ids(length, group, shifted)
                starts = [0] + [t for t in range(1, length) if ids[t] != ids[t - 1]]
                assert borders == starts + [length], (length, group, shifted)


def test_group_size_from_the_ratio():
    assert group_size_for(1024, 0.25) == 256 and group_size_for(1025, 0.25) == 257 and group_size_for(30, 0.1) == 3
    assert group_size_for(7, 1.0) == 7
    for length in range(1, 200):
        g = group_size_for(length, 0.25)
        assert len(group_borders(length, g)) - 1 <= 4  # never more than 1/ratio unshifted groups


@pytest.mark.parametrize("bad,match", [
    (dict(heads=1), "at least 2 query heads"),
    (dict(group=1), "at least 2 tokens"),
    (dict(group=2.5), "at least 2 tokens"),
    (dict(lengths=[70, 3]), "lengths must lie"),
    (dict(lengths=[1.0, 2.0]), "integer tensor"),
    (dict(kv_seq=20), "a KV cache"),
    (dict(kv_heads=3), "multiple of key/value heads"),
])
def test_bad_inputs_are_one_line_errors(bad, match):
    heads, kv_heads = bad.get("heads", 4), bad.get("kv_heads", 2)
    q = torch.randn(2, heads, 64, 8)
    k = torch.randn(2, kv_heads, bad.get("kv_seq", 64), 8)
    lengths = torch.tensor(bad["lengths"]) if "lengths" in bad else None
    with pytest.raises(ropekit.RopekitError, match=match) as err:
        ropekit.s2_attention(q, k, k.clone(), bad.get("group", 16), lengths=lengths)
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("ratio,min_length,match", [(0, 0, "group ratio"), (1.5, 0, "group ratio"), (float("nan"), 0, "group ratio"),
                                                     (0.25, -1, "s2-min-length")])
def test_bad_training_options(ratio, min_length, match):
    with pytest.raises(ropekit.RopekitError, match=match):
        check_options(ratio, min_length)


def test_flash_requested_without_flash_attn_falls_back_with_one_line(caplog, monkeypatch):
    from ropekit.methods import s2_attention as longlora

    monkeypatch.setattr(longlora, "_flash_varlen", lambda: None)  # as on a machine without flash-attn
    monkeypatch.setattr(longlora, "_FALLBACK_SAID", set())
    q, k, v = qkv(1, 4, 2, 32, 8, torch.float32)
    with caplog.at_level(logging.WARNING, logger="ropekit"):
        out = ropekit.s2_attention(q, k, v, 8, kernel="flash")
        again = ropekit.s2_attention(q, k, v, 8, kernel="flash")  # said once, not per call
        auto = ropekit.s2_attention(q, k, v, 8)  # auto never complains
    assert torch.equal(out, ropekit.s2_attention(q, k, v, 8, kernel="sdpa")) and torch.equal(out, again) and torch.equal(out, auto)
    lines = [r.getMessage() for r in caplog.records if r.name == "ropekit"]
    assert len(lines) == 1 and "flash-attention requested but flash-attn is not installed" in lines[0] and "\n" not in lines[0]
    with pytest.raises(ropekit.RopekitError, match="unknown S²-Attn kernel"):
        ropekit.s2_attention(q, k, v, 8, kernel="triton")


def fake_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn_varlen_func's contract, written with a per-sequence explicit softmax: q ``[T, h, D]``, k/v
    ``[T, h_kv, D]``, sequences given by cu_seqlens, query head i reads key/value head i // (h / h_kv)."""
    assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and causal and int(cu_q[-1]) == q.shape[0]
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max())
    out = torch.zeros_like(q)
    bounds = cu_q.tolist()
    for a, b in zip(bounds, bounds[1:]):
        mask = torch.ones(b - a, b - a, dtype=torch.bool).tril()[None, None].expand(1, q.shape[1], b - a, b - a)
        seq = lambda x: x[a:b].transpose(0, 1)[None]  # noqa: E731
        out[a:b] = masked_attention(seq(q), seq(k), seq(v), mask, softmax_scale)[0].transpose(0, 1)
    return out


@pytest.mark.parametrize("heads,kv_heads,lengths", [(8, 2, None), (9, 3, [60, 37])])
def test_flash_path_builds_the_right_sequences(monkeypatch, heads, kv_heads, lengths):
    """The varlen path's cu_seqlens and padding handling, checked on CPU with a stand-in for flash_attn_varlen_func."""
    from ropekit.methods import s2_attention as longlora

    monkeypatch.setattr(longlora, "_flash_varlen", lambda: fake_flash_varlen)
    monkeypatch.setattr(longlora, "_choose_kernel", lambda kernel, query: "flash")
    batch, seq, group = 2, 60, 16
    q, k, v = qkv(batch, heads, kv_heads, seq, 8, torch.float64)
    rows = lengths or [seq] * batch
    out = ropekit.s2_attention(q, k, v, group, lengths=torch.tensor(lengths) if lengths else None)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    q64, k64, v64 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    want = masked_attention(q64, k64, v64, s2_mask(rows, seq, heads, [group] * batch), 8 ** -0.5)
    (want * weight).sum().backward()
    assert rel_err(out, want) < 1e-10
    for got, ref in zip((q.grad, k.grad, v.grad), (q64.grad, k64.grad, v64.grad)):
        assert rel_err(got, ref) < 1e-10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("heads,kv_heads,lengths", [(8, 2, None), (9, 3, [1000, 517])])
def test_flash_varlen_path_equals_the_reference_in_bf16(heads, kv_heads, lengths):
    pytest.importorskip("flash_attn")
    batch, seq, group = 2, 1000, 256
    q, k, v = (x.detach().cuda().to(torch.bfloat16).requires_grad_() for x in qkv(batch, heads, kv_heads, seq, 64, torch.float32))
    rows = lengths or [seq] * batch
    out = ropekit.s2_attention(q, k, v, group, lengths=torch.tensor(lengths) if lengths else None, kernel="flash")
    weight = torch.randn_like(out)
    (out.float() * weight).sum().backward()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = masked_attention(q64, k64, v64, s2_mask(rows, seq, heads, [group] * batch).cuda(), 64 ** -0.5)
    (want * weight.double()).sum().backward()
    assert rel_err(out, want) < 2e-2
    for got, ref in zip((q.grad, k.grad, v.grad), (q64.grad, k64.grad, v64.grad)):
        assert rel_err(got, ref) < 5e-2


# ----------------------------------------------------------------------------------------------------------------------
# Inside a model: the training context in ropekit's attention wrapper

REFERENCE = {"groups": None, "scale_layers": set(), "c": NATIVE}


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """The explicit reference: entropy scale t_i on the logits (when on), then the S² mask of the definition."""
    batch, heads, seq, _ = query.shape
    rep = heads // key.shape[1]
    key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    logits = (query.double() @ key.double().transpose(2, 3)) * scaling
    if module.layer_idx in REFERENCE["scale_layers"]:
        positions = kwargs["position_ids"].double().expand(batch, seq)
        t = torch.clamp(torch.log(positions + 1) / math.log(REFERENCE["c"]), min=1.0)
        logits = logits * t[:, None, :, None]
    allowed = torch.zeros(batch, heads, seq, seq, dtype=torch.bool)
    for row, segments in enumerate(REFERENCE["segments"]):
        for start, length, group in segments:  # group None: full causal attention
            if group is None:
                block = torch.ones(length, length, dtype=torch.bool).tril().expand(heads, length, length)
            else:
                block = s2_mask([length], length, heads, [group])[0]
            allowed[row, :, start:start + length, start:start + length] = block
    logits = logits.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return (probs @ value.double()).to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register("reference_s2", reference_attention)
AttentionMaskInterface.register("reference_s2", eager_mask)


def reference_model(model):
    config = copy.deepcopy(model.config)
    if hasattr(config, "ropekit"):
        del config.ropekit
    reference = AutoModelForCausalLM.from_config(config, attn_implementation="reference_s2")
    reference.load_state_dict(model.state_dict())
    return reference.train()


@pytest.mark.parametrize("method", ["linear", "eabf"])
def test_training_forward_equals_the_explicit_reference(method):
    """S²-Attn composes with the frequency method and the entropy-aware scale (applied to the query first)."""
    model = ropekit.extend(tiny_model("llama"), method, target_length=4 * NATIVE).train()
    layers = model.config.ropekit["attention"].get("logit_scale", {}).get("layers", [])
    REFERENCE.update(scale_layers=set(layers), c=model.config.ropekit["attention"].get("logit_scale", {}).get("scale_length", NATIVE))
    ids = random_ids(200)
    REFERENCE["segments"] = [[(0, 200, 50)]]
    with torch.no_grad():
        with s2_training(model, group_ratio=0.25, min_length=0):
            got = model(ids, use_cache=False).logits
        want = reference_model(model)(ids, use_cache=False).logits
        full = model(ids, use_cache=False).logits  # context closed: ordinary attention again
    assert rel_err(got, want) < 1e-5
    assert rel_err(full, want) > 1e-3  # S²-Attn changed the forward, so the comparison can fail
    assert (method == "eabf") == bool(layers)


def test_packed_row_equals_segments_one_by_one():
    """A packed row (position-id resets, as ropekit's collate builds it) = each document alone, groups per document."""
    model = tiny_model("llama").train()
    docs = [random_ids(n, seed=n) for n in (150, 61, 96)]
    packed = torch.cat(docs, dim=1)
    positions = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    with s2_training(model, group_ratio=0.25, min_length=64):  # the 61-token document uses full attention
        packed_logits = model(packed, position_ids=positions, use_cache=False).logits
        packed_logits.sum().backward()
        alone = [model(d, use_cache=False).logits for d in docs]
    start = 0
    for doc, logits in zip(docs, alone):
        assert rel_err(packed_logits[:, start:start + doc.shape[1]], logits) < 1e-5
        start += doc.shape[1]
    # and the packed forward equals the explicit reference with per-document groups
    REFERENCE.update(scale_layers=set(), segments=[[(0, 150, 38), (150, 61, None), (211, 96, 24)]])
    with torch.no_grad():
        want = reference_model(model)(packed, position_ids=positions, use_cache=False).logits
    assert rel_err(packed_logits, want) < 1e-5


def test_padded_batch_equals_rows_one_by_one():
    model = tiny_model("llama").train()
    long_row, short_row = random_ids(120, seed=1), random_ids(77, seed=2)
    ids = torch.cat([long_row, torch.cat([short_row, torch.zeros(1, 43, dtype=torch.long)], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, 77:] = 0
    with torch.no_grad(), s2_training(model, min_length=0):
        batched = model(ids, attention_mask=mask, use_cache=False).logits
        first, second = model(long_row, use_cache=False).logits, model(short_row, use_cache=False).logits
    assert rel_err(batched[0], first[0]) < 1e-5 and rel_err(batched[1, :77], second[0]) < 1e-5


def test_segments_from_transformers_masks():
    model = tiny_model("llama")
    from transformers.masking_utils import create_causal_mask

    embeds = torch.zeros(1, 10, 64)
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4]])
    mask = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None, cache=None, position_ids=positions)
    assert segments_from_mask(mask) == [[(0, 3), (3, 2), (5, 5)]]
    padded = create_causal_mask(config=model.config, inputs_embeds=torch.zeros(2, 6, 64),
                                attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]), cache=None,
                                position_ids=torch.arange(6)[None].expand(2, 6))
    assert segments_from_mask(padded) == [[(0, 6)], [(0, 4)]]
    bidirectional = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ropekit.RopekitError, match="causal attention mask"):
        segments_from_mask(bidirectional)


def test_segments_for_flash_backends():
    """Flash-attention backends get a 2-D padding mask or none; packed rows are read from the position ids as
    transformers' varlen path reads them (a new sequence wherever the position is the row's minimum)."""
    from ropekit.methods.s2_attention import segments_from_padding, segments_from_positions

    assert segments_from_padding(torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])) == [[(0, 3)], [(1, 4)]]
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert segments_from_positions(packed, 1, 9) == [[(0, 3), (3, 2), (5, 4)]]
    assert segments_from_positions(torch.tensor([[0, 1, 5, 6, 9]]), 1, 5) == [[(0, 5)]]  # PoSE-style jumps: one document
    assert segments_from_positions(torch.arange(6)[None], 2, 6) == [[(0, 6)], [(0, 6)]]
    assert segments_from_positions(None, 1, 6, cu_seqlens=torch.tensor([0, 2, 6])) == [[(0, 2), (2, 4)]]


def test_refusals_in_the_model_are_one_line():
    model = tiny_model("llama")
    ids = random_ids(80)
    with s2_training(model, min_length=0), pytest.raises(ropekit.RopekitError, match="eval mode"):
        model.eval()(ids, use_cache=False)
    model.train()
    with s2_training(model, min_length=0), pytest.raises(ropekit.RopekitError, match="KV cache"):
        out = model(ids[:, :40], use_cache=True)
        model(ids[:, 40:], use_cache=True, **cache_keyword(model, out.past_key_values))
    gemma2 = tiny_model("gemma2", attn_logit_softcapping=50.0)
    with pytest.raises(ropekit.RopekitError, match="soft-capping"):
        check_model(gemma2)
    with pytest.raises(ropekit.RopekitError, match="Self-Extend"):
        check_model(ropekit.extend(tiny_model("llama"), "self_extend", target_length=4 * NATIVE))


def test_sliding_window_layers_keep_their_pattern():
    """Gemma 3: sliding layers run their own windowed attention; full layers get S²-Attn."""
    model = tiny_model("gemma3_text").train()
    ids = random_ids(120)
    seen = []
    original = S2Training.spans

    def spy(self, segments):
        seen.append(segments)
        return original(self, segments)

    S2Training.spans = spy
    try:
        with torch.no_grad(), s2_training(model, min_length=0):
            s2 = model(ids, use_cache=False, output_hidden_states=True).hidden_states
    finally:
        S2Training.spans = original
    with torch.no_grad():
        full = model(ids, use_cache=False, output_hidden_states=True).hidden_states
    assert len(seen) == 2  # layers 1 and 3 (full attention); 0 and 2 are sliding
    assert torch.equal(s2[1], full[1])  # layer 0 is a sliding layer: unchanged
    assert rel_err(s2[2], full[2]) > 1e-4  # layer 1 is full attention: S²-Attn changed it


def test_min_length_keeps_short_sequences_exact():
    model = tiny_model("llama").train()
    ids = random_ids(100)
    with torch.no_grad():
        with s2_training(model, min_length=100):
            short = model(ids, use_cache=False).logits
        full = model(ids, use_cache=False).logits
    assert torch.equal(short, full)


def test_other_models_are_untouched_by_the_context():
    model, other = tiny_model("llama").train(), tiny_model("llama", seed=1).train()
    ids = random_ids(100)
    with torch.no_grad():
        plain = other(ids, use_cache=False).logits
        with s2_training(model, min_length=0):
            inside = other(ids, use_cache=False).logits
    assert torch.equal(plain, inside)


# ----------------------------------------------------------------------------------------------------------------------
# ropekit train --attention s2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from ropekit.testing import save_tiny_checkpoint, tiny_tokenizer

    root = tmp_path_factory.mktemp("longlora")
    save_tiny_checkpoint(root / "model", vocab_size=len(tiny_tokenizer()))
    save_tiny_checkpoint(root / "tied", vocab_size=len(tiny_tokenizer()), tie_word_embeddings=True)
    (root / "doc.txt").write_text(" ".join(f"token{i % 50} and word{i % 7}." for i in range(500)))
    return root


def train_options(workspace, out, **kw):
    from ropekit.training.api import TrainOptions

    base = dict(model=str(workspace / "model"), target_length=256, output=str(out), recipe="longlora", data=str(workspace / "doc.txt"),
                device="cpu", progress=False, learning_rate=3e-3, batch_size=2, micro_batch_size=2, max_steps=3, warmup_steps=0,
                save_steps=100, s2_min_length=0, check=False)
    return ropekit.training.api.TrainOptions(**{**base, **kw})


PLAIN_LOGITS = """
import sys
sys.modules["ropekit"] = None  # any `import ropekit` now raises ImportError
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=sys.argv[3:] == ["remote"]).eval()
print(type(model).__name__)
ids = torch.arange(3, 240)[None] % 250 + 3
with torch.no_grad():
    save_file({"logits": model(ids).logits.contiguous()}, sys.argv[2])
assert sys.modules["ropekit"] is None
"""


def plain_logits(tmp_path, checkpoint, *mode):
    """Logits of ``checkpoint`` in a fresh interpreter where ropekit cannot be imported, and the model class."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = tmp_path / "plain.py"
    script.write_text(PLAIN_LOGITS)
    done = subprocess.run([sys.executable, str(script), str(checkpoint), str(tmp_path / "plain.safetensors"), *mode],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return load_file(tmp_path / "plain.safetensors")["logits"], done.stdout.split()[0]


def test_s2_training_leaves_no_trace_and_plain_transformers_loads_it(workspace, tmp_path):
    import json

    import ropekit.training.api

    summary = ropekit.training.api.train(train_options(workspace, tmp_path / "s2"))
    full = ropekit.training.api.train(train_options(workspace, tmp_path / "full", attention="full"))
    assert summary["attention"] == {"training": "s2", "group_ratio": 0.25, "kernel": "auto", "min_length": 0, "lora_plus": True}
    assert full["attention"]["training"] == "full" and full["attention"]["lora_plus"] is False
    s2_losses = [json.loads(line)["loss"] for line in open(tmp_path / "s2" / "training_log.jsonl")]
    full_losses = [json.loads(line)["loss"] for line in open(tmp_path / "full" / "training_log.jsonl")]
    assert s2_losses[0] != pytest.approx(full_losses[0], rel=1e-4)  # S²-Attn really ran in the training forward

    config_text = (tmp_path / "s2" / "config.json").read_text()
    assert "s2" not in json.loads(config_text)["ropekit"]["attention"] and "group_ratio" not in config_text
    assert json.loads(config_text)["ropekit"] == json.loads((tmp_path / "full" / "config.json").read_text())["ropekit"]
    plain, class_name = plain_logits(tmp_path, tmp_path / "s2")
    assert class_name == "LlamaForCausalLM"  # a frequency-only extension: no bundled code, the stock class
    model, _ = ropekit.load_model(tmp_path / "s2", device="cpu")
    ids = torch.arange(3, 240)[None] % 250 + 3
    with torch.no_grad():
        ours = model(ids).logits
    assert rel_err(ours, plain) < 1e-6
    base, _ = ropekit.load_model(workspace / "model", device="cpu")
    assert not torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)  # LoRA+: embeddings trained
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)  # the output head stays frozen


def test_s2_trained_attention_side_checkpoint_bundles_full_attention_only(workspace, tmp_path):
    """EABF (an attention-side method) trained with S²-Attn: the checkpoint is self-contained (bundled modeling
    code), its record is the same as after full-attention training, and the bundled code, run without ropekit,
    gives the logits of ropekit's own runtime: ordinary full attention with the entropy scale."""
    import json

    import ropekit.training.api

    ropekit.training.api.train(train_options(workspace, tmp_path / "s2", method="eabf", max_steps=2))
    ropekit.training.api.train(train_options(workspace, tmp_path / "full", method="eabf", max_steps=2, attention="full"))
    config = json.loads((tmp_path / "s2" / "config.json").read_text())
    assert config["model_type"] == "ropekit_llama" and (tmp_path / "s2" / "modeling_ropekit.py").exists()
    assert config["ropekit"] == json.loads((tmp_path / "full" / "config.json").read_text())["ropekit"]
    assert sorted(config["ropekit"]["attention"]) == ["logit_scale"]  # the plan the bundled code runs: no S²-Attn
    text = (tmp_path / "s2" / "config.json").read_text()
    assert "s2" not in text and "group_ratio" not in text and "shifted" not in text
    remote, class_name = plain_logits(tmp_path, tmp_path / "s2", "remote")
    assert class_name == "RopekitLlamaForCausalLM"
    model, _ = ropekit.load_model(tmp_path / "s2", device="cpu")
    ids = torch.arange(3, 240)[None] % 250 + 3
    with torch.no_grad():
        ours = model(ids).logits
    assert rel_err(ours, remote) < 1e-5
    # and the check can fail: the same model with S²-Attn open gives other logits
    with torch.no_grad(), s2_training(model.train(), min_length=0):
        assert rel_err(model(ids, use_cache=False).logits, remote) > 1e-4


def test_lora_plus_unties_tied_embeddings_and_reloads_equal(workspace, tmp_path):
    import ropekit.training.api

    ropekit.training.api.train(train_options(workspace, tmp_path / "tied", model=str(workspace / "tied"), max_steps=2))
    base, _ = ropekit.load_model(workspace / "tied", device="cpu")
    assert base.config.tie_word_embeddings
    trained, _ = ropekit.load_model(tmp_path / "tied", device="cpu")
    assert trained.config.tie_word_embeddings is False
    assert torch.equal(trained.lm_head.weight, base.lm_head.weight)
    assert not torch.equal(trained.model.embed_tokens.weight, base.model.embed_tokens.weight)
    # merge → save → reload: the in-memory merged model and the reloaded checkpoint give equal logits
    from peft import PeftModel  # noqa: F401  (peft is a dependency; the merge ran inside train)

    ids = random_ids(100)
    again, _ = ropekit.load_model(tmp_path / "tied", device="cpu")
    with torch.no_grad():
        assert torch.equal(trained(ids).logits, again(ids).logits)


def test_cli_refusals_are_one_line(workspace, tmp_path):
    from typer.testing import CliRunner

    from ropekit.cli import app

    runner = CliRunner()
    common = ["train", str(workspace / "model"), "--target-length", "256", "--data", str(workspace / "doc.txt"), "--recipe", "longlora",
              "--device", "cpu", "--max-steps", "1"]
    for extra, match in ((["--group-ratio", "0"], "group ratio must be in (0, 1]"), (["--attention", "sparse"], "unknown attention"),
                         (["--s2-min-length", "-5"], "s2-min-length")):
        result = runner.invoke(app, [*common, *extra, "--output", str(tmp_path / "x")])
        assert result.exit_code == 2, result.output
        assert match in result.output and result.output.count("\n") <= 2
    gemma = tmp_path / "gemma2"
    from ropekit.testing import save_tiny_checkpoint, tiny_tokenizer

    save_tiny_checkpoint(gemma, "gemma2", vocab_size=len(tiny_tokenizer()), attn_logit_softcapping=50.0)
    result = runner.invoke(app, [*common[:1], str(gemma), *common[2:], "--output", str(tmp_path / "g")])
    assert result.exit_code == 2 and "soft-capping" in result.output
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())


def test_study_rows_compare_s2_with_full_attention_on_the_same_budget():
    from ropekit.studies.study import get_preset

    for name, target in (("smollm2-cpu-smoke", "16k"), ("smollm2-64k", "64k")):
        runs = {r.label: r for r in get_preset(name).runs}
        s2, full = runs[f"longlora-{target}"], runs[f"pi-loraplus-{target}"]
        assert s2.method == full.method == "linear" and s2.recipe == full.recipe and s2.target == full.target == target
        assert s2.options["attention"] == "s2" and full.options["attention"] == "full"
        same = lambda o: {k: v for k, v in o.items() if k not in ("attention", "s2_min_length")}  # noqa: E731
        assert same(s2.options) == same(full.options)
        assert s2.options["lora_r"] == 8 and s2.options["lora_alpha"] == 16 and s2.options["train_embeddings_and_norms"]
    plain = {r.label: r for r in get_preset("smollm2-cpu-smoke").runs}["pi-16k"]
    assert {k: plain.options[k] for k in ("samples", "train_length", "max_steps")} == {"samples": 4, "train_length": "1k", "max_steps": 2}


def test_benchmark_smoke_writes_its_json(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "s2_attention.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--json", str(tmp_path / "s2.json")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "s2.json").read_text())
    assert results["shape"] == "tiny" and results["group_ratio"] == 0.25
    for part in ("attention", "step"):
        (row,) = results[part]
        assert row["length"] == 256 and row["full_s"] > 0 and row["s2_s"] > 0
        assert row["ratio"] == pytest.approx(row["full_s"] / row["s2_s"], rel=1e-3)


def test_main_job_overhead_smoke_compares_two_sources(tmp_path):
    """The before/after benchmark runs both sources (each child asserts it imported the one it was given)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "main_job_overhead.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--before", "HEAD", "--json", str(tmp_path / "o.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "o.json").read_text())
    assert results["smoke"] and results["before"] == "HEAD"
    assert [(r["method"], r["length"]) for r in results["rows"]] == [("yarn", 256), ("eabf", 256)]
    for row in results["rows"]:
        assert len(row["before_cpu_s"]) == len(row["after_cpu_s"]) == 1 and min(row["before_cpu_s"] + row["after_cpu_s"]) > 0
        assert row["ratio"] == pytest.approx(row["after_cpu_s"][0] / row["before_cpu_s"][0], rel=1e-3)
