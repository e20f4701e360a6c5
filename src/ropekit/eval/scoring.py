"""Teacher-forced answer scoring: an answer counts as retrieved when every answer token is the argmax.

For a fixed answer this equals greedy decoding of ``len(answer)`` tokens (greedy picks the argmax at each step, and
the inputs it conditions on are exactly the answer's earlier tokens when all of them were argmax), at the cost of one
forward pass and without a KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..extension import reset_rope_state


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
