"""Memory-saving training paths give the same losses and gradients as the plain ones."""

import copy

import pytest
import torch

from ropekit.training.data import IGNORE
from ropekit.training.memory import ActivationOffload, chunked_causal_lm_loss, make_chunked_loss, tile_mlp, training_flops_per_token, untile_mlp
from ropekit.testing import random_ids, tiny_model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])  # gemma2: tied head and final logit soft-capping
def test_chunked_loss_equals_transformers_loss_and_gradients(model_type):
    ids = random_ids(120, batch=2)
    labels = ids.clone()
    labels[:, :50] = IGNORE  # a prompt without loss, as in response-only SFT
    plain = tiny_model(model_type, final_logit_softcapping=30.0) if model_type == "gemma2" else tiny_model(model_type)
    chunked = copy.deepcopy(plain)
    loss = plain(input_ids=ids, labels=labels).loss
    loss.backward()
    out = chunked(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    mine = make_chunked_loss(chunked, chunk=37)(out, labels)
    mine.backward()
    assert torch.allclose(mine, loss, rtol=1e-5)
    g_plain, g_mine = grads(plain), grads(chunked)
    assert g_plain.keys() == g_mine.keys()
    for name in g_plain:
        assert torch.allclose(g_mine[name], g_plain[name], rtol=1e-4, atol=1e-6), name


def test_chunked_loss_divides_by_num_items_in_batch():
    hidden = torch.randn(1, 10, 8)
    head = torch.nn.Linear(8, 5, bias=False)
    labels = torch.randint(0, 5, (1, 10))
    mean = chunked_causal_lm_loss(hidden, head, labels, chunk=3)
    total = chunked_causal_lm_loss(hidden, head, labels, num_items_in_batch=1, chunk=3)
    assert torch.allclose(mean * 9, total)


def test_tiled_mlp_is_exact_and_removable():
    model = tiny_model("llama")
    reference = copy.deepcopy(model)
    ids = random_ids(100)
    assert tile_mlp(model, tile=16) == 4
    assert list(model.state_dict()) == list(reference.state_dict())  # parameter names unchanged
    model(ids, labels=ids).loss.backward()
    reference(ids, labels=ids).loss.backward()
    for (name, a), b in zip(grads(model).items(), grads(reference).values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
    untile_mlp(model)
    assert "forward" not in vars(model.model.layers[0].mlp)


def test_activation_offload_is_exact():
    model = tiny_model("llama")
    reference = copy.deepcopy(model)
    ids = random_ids(80)
    with ActivationOffload():
        loss = model(ids, labels=ids).loss
    loss.backward()
    reference(ids, labels=ids).loss.backward()
    for a, b in zip(grads(model).values(), grads(reference).values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_flops_per_token_formula():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=32000)  # TinyLlama-1.1B
    per_token = training_flops_per_token(config, 16384)
    non_embedding = 22 * (2048 * 2048 * 2 + 2048 * 256 * 2 + 3 * 2048 * 5632) + 2048 * 32000
    assert per_token == pytest.approx(6 * non_embedding + 6 * 22 * 16384 * 2048)
    assert 0.95e9 < non_embedding < 1.1e9
