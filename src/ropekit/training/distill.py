"""In-window distillation towards the starting model: a fine-tune that keeps the model it started from.

Extending a model changes it before any step is taken (EABF's base change alone raised SmolLM2's in-window
perplexity by a third, docs/training.md), and a few steps on retrieval data move it further. This term pulls the
trained model's next-token distributions back towards the *starting* model's — the checkpoint as loaded, before
extension — on every token the starting model sees inside its native window::

    loss = task loss + weight · mean_t KL(p_start(· | x_<t) ‖ p_trained(· | x_<t)),   t with position id < native

Shapes: ``input_ids``, ``position_ids`` ``[B, S]``; hidden states ``[B, S, D]``; the KL runs over chunks of
``chunk`` token rows, the vocabulary logits of each chunk only (full ``[B, S, V]`` logits never exist, and under
autograd each chunk's logits are recomputed in the backward instead of kept). Beyond the native window the
starting model has nothing to teach (its positions are untrained there), so those tokens add no term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _kl_sum(student_rows, teacher_rows, student_head, teacher_head, softcap) -> torch.Tensor:
    s = F.linear(student_rows, student_head.weight, student_head.bias).float()
    with torch.no_grad():
        t = F.linear(teacher_rows, teacher_head.weight, teacher_head.bias).float()
    if softcap:
        s, t = torch.tanh(s / softcap) * softcap, torch.tanh(t / softcap) * softcap
    log_t = F.log_softmax(t, dim=-1)
    return (log_t.exp() * (log_t - F.log_softmax(s, dim=-1))).sum()


class Distill:
    """The distillation term of :class:`~ropekit.training.trainer.RopekitTrainer` (``distill=Distill(...)``).

    ``teacher``: the starting model (frozen here; same device and dtype as the trained one), ``weight``: the term's
    factor, ``window``: the starting model's native length (tokens with position ids ≥ it are left out)."""

    def __init__(self, teacher, weight: float, window: int, chunk: int = 4096):
        self.teacher, self.weight, self.window, self.chunk = teacher.eval(), float(weight), int(window), chunk
        self.last = None  # the last term added (for the loss log)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def term(self, model, inputs: dict, outputs) -> torch.Tensor:
        """Mean KL(start ‖ trained) over the in-window tokens of this micro-batch (0 when it has none)."""
        ids = inputs["input_ids"]
        positions = inputs.get("position_ids")
        if positions is None:
            positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        keep = positions < self.window
        if inputs.get("attention_mask") is not None and inputs["attention_mask"].dim() == 2:
            keep = keep & inputs["attention_mask"].bool()
        student_head = _unwrap(model).get_output_embeddings()
        teacher_head = self.teacher.get_output_embeddings()
        with torch.no_grad():
            teacher_hidden = self.teacher(input_ids=ids, position_ids=positions, attention_mask=inputs.get("attention_mask"),
                                          output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        student_rows = outputs.hidden_states[-1][keep]  # the trainer asks for the final (normed) hidden states
        teacher_rows = teacher_hidden[keep].to(student_rows.dtype)
        count = student_rows.shape[0]
        total = student_rows.new_zeros((), dtype=torch.float32)
        softcap = getattr(self.teacher.config, "final_logit_softcapping", None)
        for start in range(0, count, self.chunk):
            part = slice(start, start + self.chunk)
            if torch.is_grad_enabled():
                total = total + checkpoint(_kl_sum, student_rows[part], teacher_rows[part], student_head, teacher_head, softcap,
                                           use_reentrant=False)
            else:
                total = total + _kl_sum(student_rows[part], teacher_rows[part], student_head, teacher_head, softcap)
        return self.weight * total / max(count, 1)


def _unwrap(model):
    """The model under accelerate / DDP / peft wrappers (for its output head)."""
    while hasattr(model, "module"):
        model = model.module
    return model
