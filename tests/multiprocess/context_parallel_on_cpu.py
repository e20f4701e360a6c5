"""Context parallelism's position logic on 2 CPU processes (gloo), for tests/test_parallel.py.

Run with ``python -m torch.distributed.run --nproc_per_node 2 context_parallel_on_cpu.py OUT_DIR``.

The path is the one a ``fsdp2-context-parallel.yaml`` run takes, with the real code of each layer:
ropekit's ``TrainingSet`` and CP collator (``collate_padded``) → transformers' ``Trainer._prepare_context_parallel_inputs``
(shift labels, collect ``input_ids``/``labels``/``shift_labels``/``attention_mask``/``position_ids`` as buffers) →
accelerate's ``Accelerator.maybe_context_parallel`` → torch's ``context_parallel`` (head-tail load-balanced split of
every buffer, in place) → the model with accelerate's CP hooks (mask dropped, ``is_causal=True``) → ropekit's
attention wrapper (logit scale from each shard's position ids) → ``F.scaled_dot_product_attention``.

One piece is replaced: torch intercepts ``F.scaled_dot_product_attention`` and dispatches the CUDA flash/efficient/
cuDNN kernels to its ring attention; the CPU kernel has no such rule (``NotImplementedError: Operator
aten._scaled_dot_product_flash_attention_for_cpu.default does not have a sharding strategy registered``, torch
2.13). Here the same interception point runs what torch's all-gather rotation computes: every process gathers all
keys and values and attends from its query shard with the causal mask of the tokens' original order
(torch/distributed/tensor/experimental/_context_parallel/_load_balancer.py, ``_HeadTailLoadBalancer``).
Each process writes its results to OUT_DIR/rank{r}.json.
"""

import contextlib
import copy
import json
import sys
import types
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.big_modeling import _attach_context_parallel_hooks
from accelerate.parallelism_config import ParallelismConfig
from torch.distributed.tensor.experimental import context_parallel  # what accelerate's _prepare_cp binds
from torch.distributed.tensor.experimental._attention import _HeadTailLoadBalancer, context_parallel_unshard
from transformers import Trainer

import ropekit
from ropekit.methods.runtime import observe
from ropekit.training.data import IGNORE, Example
from ropekit.testing import random_ids, tiny_model
from ropekit.training.trainer import TrainingSet, collate, collate_padded

CP = 2
TORCH_SDPA = F.scaled_dot_product_attention


@contextlib.contextmanager
def cpu_ring_attention(seq_len: int):
    """Inside torch's ``context_parallel``: attend from this process's query shard to all keys (all-gathered),
    with the causal mask of the original token order."""
    rank = dist.get_rank()
    order = _HeadTailLoadBalancer(seq_len, CP, "cpu")._generate_indices()[0]  # token index at each sharded slot
    q_index, k_index = order.view(CP, -1)[rank], order

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        assert attn_mask is None and is_causal, "accelerate's CP hook leaves full causal attention"
        keys = [torch.empty_like(key) for _ in range(CP)]
        values = [torch.empty_like(value) for _ in range(CP)]
        dist.all_gather(keys, key.contiguous())
        dist.all_gather(values, value.contiguous())
        mask = k_index[None, :] <= q_index[:, None]  # [q, kv]
        return TORCH_SDPA(query, torch.cat(keys, 2), torch.cat(values, 2), attn_mask=mask, scale=scale, enable_gqa=enable_gqa)

    patched, F.scaled_dot_product_attention = F.scaled_dot_product_attention, sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = patched  # torch's own wrapper, which context_parallel restores on exit


def capture_queries(store: list):
    """The query each attention layer hands to its kernel (post-RoPE, logit scale applied), with its position ids."""
    return observe(lambda module, query, key, mask, scaling, softcap, position_ids: store.append((query.detach().clone(), position_ids.clone())))


def reference(model, rows):
    """The unsharded forward, as one process trains: ropekit's `collate`, the model's own loss (``model`` without
    accelerate's CP hooks, which would drop the block mask of packed rows)."""
    batch = collate(rows)
    queries = []
    with torch.no_grad(), capture_queries(queries):
        out = model(**batch)
    return batch, out, queries


def sharded(model, accelerator, rows, local_positions: bool = False):
    """The context-parallel forward of the same rows; returns this process's loss, its logits unsharded into the
    original order, its queries and the position ids its shard carried."""
    inputs = collate_padded(rows, multiple=2 * CP)
    seq_len = inputs["input_ids"].shape[1]
    num_items = int((inputs["labels"][:, 1:] != IGNORE).sum())  # counted before sharding, as the Trainer does
    trainer = types.SimpleNamespace(accelerator=accelerator)
    cp_context, inputs = Trainer._prepare_context_parallel_inputs(trainer, model, inputs)
    queries = []
    with torch.no_grad(), cp_context(), cpu_ring_attention(seq_len), capture_queries(queries):
        if local_positions:  # the bug this test must catch: ids counted inside the shard
            inputs["position_ids"] = torch.arange(inputs["input_ids"].shape[1]).expand_as(inputs["input_ids"])
        shard_positions = inputs["position_ids"].clone()
        out = model(**inputs, num_items_in_batch=num_items)
    loss = out.loss.detach() * 1.0
    dist.all_reduce(loss)  # each process holds its shard's share of the summed loss
    (logits,) = context_parallel_unshard(accelerator.torch_device_mesh["cp"], [out.logits.contiguous()], [1])
    return loss, logits, queries, shard_positions, inputs


def compare(model, plain, accelerator, rows, real_lengths):
    """Max relative differences between the sharded forward of ``rows`` and the unsharded one (of ``plain``)."""
    rank = dist.get_rank()
    batch, ref, ref_queries = reference(plain, rows)
    loss, logits, queries, shard_positions, inputs = sharded(model, accelerator, rows)
    seq_len = logits.shape[1]
    order = _HeadTailLoadBalancer(seq_len, CP, "cpu")._generate_indices()[0].view(CP, -1)[rank]
    full_positions = collate_padded(rows, multiple=2 * CP)["position_ids"]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    # `collate` stacks rows with jumping ids and packs contiguous rows into one; compare real tokens row by row
    ref_logits = ref.logits if rows[0]["jumps"] else torch.stack([torch.nn.functional.pad(part, (0, 0, 0, seq_len - n)) for part, n in
                                                                 zip(ref.logits[0].split(real_lengths), real_lengths)])
    logit_err = max(rel(logits[i, :n], ref_logits[i, :n]) for i, n in enumerate(real_lengths))
    query_err = 0.0
    for (q, pos), (rq, rpos) in zip(queries, ref_queries):  # one entry per layer
        for i, n in enumerate(real_lengths):
            keep = order < n  # this shard's slots that hold real tokens of row i
            if rows[0]["jumps"]:
                expected = rq[i][:, order[keep]]
            else:
                expected = rq[0][:, sum(real_lengths[:i]) + order[keep]]
            query_err = max(query_err, rel(q[i][:, keep], expected))
    positions_global = bool(torch.equal(shard_positions, full_positions[:, order]))
    return {"loss": float(loss), "reference_loss": float(ref.loss), "logit_err": logit_err, "query_err": query_err,
            "positions_global": positions_global, "max_position": int(shard_positions.max()), "seq_len": seq_len,
            "shard_len": int(inputs["input_ids"].shape[1]), "layers_seen": len(queries)}


def main(out_dir: Path):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    parallelism = ParallelismConfig(cp_size=CP)
    accelerator = types.SimpleNamespace(parallelism_config=parallelism, torch_device_mesh=parallelism.build_device_mesh("cpu"))
    accelerator._cp_context = partial(context_parallel, mesh=accelerator.torch_device_mesh["cp"])  # as Accelerator._prepare_cp
    accelerator.maybe_context_parallel = partial(Accelerator.maybe_context_parallel, accelerator)

    plain = ropekit.extend(tiny_model("llama", attn_implementation="sdpa"), "eabf", target_length=512)
    model = copy.deepcopy(plain)
    _attach_context_parallel_hooks(model)  # what accelerate attaches to every self_attn when it prepares a CP model
    docs = [Example(random_ids(400, seed=s)[0].tolist(), random_ids(400, seed=s)[0].tolist()) for s in (1, 2)]
    results = {"scale_layers": model.config.ropekit["attention"]["logit_scale"]["layers"]}
    # LongRecipe: every 7th token id ends a sentence (about one in 7 tokens), so its gaps land inside the 64-token rows
    ends = {"longrecipe": {"sentence_ends": frozenset(range(3, 256, 7))}}
    for strategy in ("cream", "pose", "longrecipe"):
        dataset = TrainingSet(docs, strategy, train_length=64, target_length=512, seed=3, **ends.get(strategy, {}))
        rows = [dataset[0], dataset[1]]
        results[strategy] = compare(model, plain, accelerator, rows, [64, 64])
    # contiguous rows of unequal length: the CP collator pads them (positions keep counting, labels ignored)
    chat = [Example(random_ids(n, seed=n)[0].tolist(), [IGNORE] * (n // 2) + random_ids(n, seed=n)[0].tolist()[n // 2:]) for n in (90, 61)]
    rows = [TrainingSet(chat, "contiguous", train_length=512, target_length=512)[i] for i in range(2)]
    results["contiguous_padded"] = compare(model, plain, accelerator, rows, [90, 61])
    # negative control: shard-local position ids must not match
    dataset = TrainingSet(docs, "cream", train_length=64, target_length=512, seed=3)
    rows = [dataset[0], dataset[1]]
    _, ref, _ = reference(plain, rows)
    _, logits, _, _, _ = sharded(model, accelerator, rows, local_positions=True)
    results["local_positions_logit_err"] = float((logits - ref.logits).abs().max() / ref.logits.abs().max())
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
