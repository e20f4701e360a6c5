"""Teacher-forced answer scoring: an answer counts as retrieved when every answer token is the argmax.

For a fixed answer this equals greedy decoding of ``len(answer)`` tokens (greedy picks the argmax at each step, and
the inputs it conditions on are exactly the answer's earlier tokens when all of them were argmax), at the cost of one
forward pass and without a KV cache.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..extension import reset_rope_state, rope_depends_on_length, sliding_layers, text_config


@dataclass
class Scored:
    correct: bool
    answer_nll: float  # mean NLL of the answer tokens (nats)
    predicted: list[int]  # argmax token at each answer position


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_answers(model, samples: list[tuple[list[int], list[int]]], batch_size: int = 1) -> list[Scored]:
    """Score ``(context_ids, answer_ids)`` pairs; rows of equal total length are batched up to ``batch_size``."""
    device = model_device(model)
    results: list[Scored | None] = [None] * len(samples)
    by_length: dict[int, list[int]] = {}
    for index, (context, answer) in enumerate(samples):
        by_length.setdefault(len(context) + len(answer), []).append(index)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            keep = max(len(samples[i][1]) for i in chunk) + 1
            ids = torch.tensor([samples[i][0] + samples[i][1] for i in chunk], device=device)
            reset_rope_state(model)
            logits = model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits.float()
            for row, i in enumerate(chunk):
                answer = torch.tensor(samples[i][1], device=device)
                # logits[:, -keep:] cover positions total-keep .. total-1; answer token k is predicted at total-len(answer)-1+k
                predicting = logits[row, keep - len(answer) - 1 : keep - 1]
                nll = torch.nn.functional.cross_entropy(predicting, answer).item()
                predicted = predicting.argmax(-1)
                results[i] = Scored(bool((predicted == answer).all()), nll, predicted.tolist())
    return results  # type: ignore[return-value]


def can_share_prefix(model) -> bool:
    """Whether a KV cache of a prefix gives the same logits as the full forward: not for RoPE whose frequencies depend
    on the sequence length (dynamic NTK, LongRoPE) nor for sliding-window layers."""
    return not rope_depends_on_length(model) and not sliding_layers(text_config(model))


def new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def crop_cache(cache, size: int) -> None:
    """Keep the first ``size`` cached tokens (a negative ``crop`` removes tokens in every transformers 5.x)."""
    remove = cache.get_seq_length() - size
    if remove > 0:
        cache.crop(-remove)


def cache_keyword(module, cache) -> dict:
    """The keyword argument that hands a KV cache to ``module``'s forward: ``cache`` in transformers ≥ 5.24 (which
    deprecates ``past_key_values``, to be removed in 5.40), ``past_key_values`` before."""
    return {"cache": cache} if "cache" in inspect.signature(module.forward).parameters else {"past_key_values": cache}


@torch.no_grad()
def score_after_prefix(model, prefix: list[int], continuations: list[tuple[list[int], list[int]]]) -> list[Scored]:
    """Score ``(question_ids, answer_ids)`` continuations of one shared ``prefix`` (e.g. one record list asked about
    several records): the prefix runs once into a KV cache, then each question + answer runs against it (cropped
    back after each). The same logits as ``score_answers`` on ``prefix + question`` for every continuation, at the
    cost of one long forward instead of one per question. Falls back to full forwards where a cache would not give
    the same logits (:func:`can_share_prefix`)."""
    if not can_share_prefix(model):
        return score_answers(model, [(prefix + question, answer) for question, answer in continuations])
    device = model_device(model)
    reset_rope_state(model)
    cache = new_cache(model)
    decoder = model.get_decoder()
    decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True, **cache_keyword(decoder, cache))
    with_cache = cache_keyword(model, cache)
    results = []
    for question, answer in continuations:
        keep = len(answer) + 1
        ids = torch.tensor([question + answer], device=device)
        logits = model(input_ids=ids, use_cache=True, logits_to_keep=keep, **with_cache).logits[0].float()
        gold = torch.tensor(answer, device=device)
        predicting = logits[:-1]
        predicted = predicting.argmax(-1)
        results.append(Scored(bool((predicted == gold).all()), torch.nn.functional.cross_entropy(predicting, gold).item(),
                              predicted.tolist()))
        crop_cache(cache, len(prefix))
    return results


@torch.no_grad()
def generate_greedy(model, tokenizer, contexts: list[list[int]], max_new_tokens: int, batch_size: int = 1) -> list[str]:
    """Greedy decoding with a KV cache; returns the decoded continuations (special tokens removed).

    Rows of equal length are batched (no padding needed); generation stops at the tokenizer's EOS.
    """
    device = model_device(model)
    outputs: list[str | None] = [None] * len(contexts)
    by_length: dict[int, list[int]] = {}
    for index, context in enumerate(contexts):
        by_length.setdefault(len(context), []).append(index)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            ids = torch.tensor([contexts[i] for i in chunk], device=device)
            reset_rope_state(model)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                 num_beams=1, eos_token_id=eos, pad_token_id=pad, use_cache=True)
            for row, i in enumerate(chunk):
                outputs[i] = tokenizer.decode(out[row, ids.shape[1]:], skip_special_tokens=True)
    return outputs  # type: ignore[return-value]
