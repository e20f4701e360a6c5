"""Tiny random models built in code, for tests, examples and CPU benchmarks (no download needed).

``tiny_model("llama")`` returns a 4-layer model with a 64-token native window, so "beyond the native window" costs
a few hundred tokens. Every architecture ropekit supports has an entry here.
"""

from __future__ import annotations

import torch

NATIVE = 64
BYTES = 256
VOCAB = BYTES + 3  # one token per byte, then <pad>, <s>, </s>
PAD, BOS, EOS = BYTES, BYTES + 1, BYTES + 2


def tiny_config(model_type: str = "llama", native_length: int = NATIVE, **overrides):
    """A small config of ``model_type`` with RoPE θ = 10,000 and ``native_length`` positions."""
    from transformers import AutoConfig

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=native_length, pad_token_id=PAD, bos_token_id=BOS,
                  eos_token_id=EOS, tie_word_embeddings=False)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    per_type = {
        "llama": dict(rope_parameters=rope),
        "mistral": dict(rope_parameters=rope, sliding_window=None),
        "qwen2": dict(rope_parameters=rope, use_sliding_window=False),
        "qwen3": dict(rope_parameters=rope, head_dim=16),
        "gemma": dict(rope_parameters=rope, head_dim=16),
        "gemma2": dict(rope_parameters=rope, head_dim=16, sliding_window=16, query_pre_attn_scalar=16,
                       layer_types=["sliding_attention", "full_attention"] * 2),
        "gemma3_text": dict(head_dim=16, sliding_window=16, query_pre_attn_scalar=16,
                            layer_types=["sliding_attention", "full_attention"] * 2,
                            rope_parameters={"full_attention": dict(rope), "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        "phi3": dict(rope_parameters=rope, sliding_window=None, original_max_position_embeddings=native_length),
    }
    if model_type not in per_type:
        raise ValueError(f"no tiny config for {model_type}")
    kwargs = {**common, **per_type[model_type], **overrides}
    config = AutoConfig.for_model(model_type, **kwargs)
    return config


def tiny_model(model_type: str = "llama", seed: int = 0, attn_implementation: str | None = None, dtype=torch.float32, **overrides):
    """A randomly initialised causal LM of ``model_type`` (eval mode, fp32 by default)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    # Random init gives near-uniform attention; larger q/k weights make positions matter so tests can fail.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                param.mul_(8.0)
    return model.eval()


def random_ids(length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, BYTES, (batch, length), generator=generator)


CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_tokenizer():
    """A byte-level tokenizer (token id = byte value) with <pad>/<s>/</s> and a small chat template, built in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(BYTES)}
    assert set(vocab) == set(alphabet)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.add_special_tokens(["<pad>", "<s>", "</s>"])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (PAD, BOS, EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (what ByteLevel pre-tokenisation emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(BYTES):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(BYTES + extra)
            extra += 1
    return chars


def save_tiny_checkpoint(path, model_type: str = "llama", **kwargs):
    """Write a tiny model and its tokenizer to ``path`` (a directory ``ropekit.load_model`` accepts)."""
    model = tiny_model(model_type, **kwargs)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
