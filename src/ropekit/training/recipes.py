"""Training recipes: each one a paper's settings (learning rate, schedule, batch, steps, data kind, where the
training length sits), looked up by name by :func:`ropekit.training.api.train`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import RopekitError


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of a published fine-tuning recipe. Every field can be overridden from the API or CLI."""

    name: str
    source: str
    method: str  # default RoPE method
    strategy: str  # position strategy
    train_at: str  # "target": train at the target length; "native": at the pre-trained length; "0.3": that fraction of the target
    data: str  # default data when none is given: "chat" (synthetic conversations, loss on the answers), "text" (Shakespeare,
    # loss on every token) or "mix" (half each: the retrieval skill and language modelling in the same steps)
    learning_rate: float
    schedule: str  # transformers lr_scheduler_type
    warmup_steps: int
    epochs: float
    max_steps: int  # -1: run `epochs` epochs
    batch_size: int  # global batch (sequences per optimizer step)
    adam_beta1: float
    adam_beta2: float
    weight_decay: float
    max_grad_norm: float
    samples: int  # default number of synthetic conversations when no data is given
    min_tokens_fraction: float  # chat data: drop conversations shorter than this fraction of the training length
    text_share: float = 0.5  # "mix" data: the share of the samples that are plain-text windows
    tasks: str = "fact,key,kv,line"  # synthetic conversations: the record kinds (ropekit.training.synthetic; "quote" opt-in)
    distill: float = 0.0  # weight of the in-window distillation term towards the starting model (ropekit.training.distill)
    attention: str = "full"  # "s2": LongLoRA's shifted sparse attention during training
    lora_r: int = 0  # 0: full fine-tuning
    lora_alpha: int | None = None
    lora_targets: str = "all-linear"


RECIPES = {
    "eabf-paper": Recipe(
        "eabf-paper", "Zhang et al. 2024, arXiv 2401.07004, §4.1 and App. A (100-sample setting); chosen for 7B models: on "
        "SmolLM2-135M its answer-only loss wrecked in-window perplexity (+120% at lr 2e-4, +30% at 2e-5; docs/training.md), "
        "so small models use eabf-keep",
        method="eabf", strategy="contiguous", train_at="target", data="chat", learning_rate=2e-5, schedule="cosine",
        warmup_steps=0, epochs=2, max_steps=-1, batch_size=32, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1,
        max_grad_norm=1.0, samples=100, min_tokens_fraction=10_000 / 16_384),  # "drop < 10,000 tokens" at 16K
    # The EABF budget on a data mix: on SmolLM2-135M (one NVIDIA H100), eabf-paper's conversations alone at lr 2e-4
    # gave passkey 95% at 64K but a natural-text perplexity of 834-4412 (docs/results.md): an answer-only loss on 8
    # steps teaches the format and wrecks language modelling. Half the samples become plain text with loss on every token.
    "eabf-mix": Recipe(
        "eabf-mix", "eabf-paper's budget (100 samples, 2 epochs, batch 32) on half synthetic retrieval conversations and "
        "half plain-text windows; lr 2e-4 for small models (shared anchors: 2e-5 was chosen for 7B)",
        method="eabf", strategy="contiguous", train_at="target", data="mix", learning_rate=2e-4, schedule="cosine",
        warmup_steps=0, epochs=2, max_steps=-1, batch_size=32, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1,
        max_grad_norm=1.0, samples=100, min_tokens_fraction=10_000 / 16_384),
    # The default of `ropekit train`: eabf-paper's budget, with the levers that kept SmolLM2's in-window perplexity
    # best on the dev items of benchmarks/keep_the_model.py (docs/training.md, "Recipes that keep the model").
    "eabf-keep": Recipe(
        "eabf-keep", "eabf-paper's budget (100 samples, 2 epochs, batch 32) at lr 2e-4 for small models, three quarters of the "
        "samples plain text (loss on every token) and in-window distillation towards the starting model (weight 1); "
        "chosen by measurement (docs/training.md)",
        method="eabf", strategy="contiguous", train_at="target", data="mix", learning_rate=2e-4, schedule="cosine",
        warmup_steps=0, epochs=2, max_steps=-1, batch_size=32, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1,
        max_grad_norm=1.0, samples=100, min_tokens_fraction=10_000 / 16_384, text_share=0.75, distill=1.0),
    "cream-paper": Recipe(
        "cream-paper", "Wu et al. 2024, arXiv 2406.07138, and bigai-nlco/CREAM scripts (base-model setting)",
        method="linear", strategy="cream", train_at="native", data="text", learning_rate=2e-5, schedule="linear",
        warmup_steps=10, epochs=1, max_steps=1000, batch_size=32, adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0,
        max_grad_norm=1.0, samples=0, min_tokens_fraction=0.0),
    # LongRecipe stage 0 (Hu et al. 2024, arXiv 2409.00509, App. A Tab. 4; zhiyuanhubj/LongRecipe scripts): 30% of the
    # target per sample, lr 5e-5 constant (DeepSpeed WarmupLR with 0 warm-up steps), AdamW (0.9, 0.999), wd 0.1, batch 96,
    # 1 epoch. "longrecipe" runs it and then the replay and merge stages (ropekit.training.longrecipe); "longrecipe-extend" and
    # "longrecipe-replay" are its stages, runnable alone. Method "abf" with θ from the paper's dynamic-NTK rule (set there).
    "longrecipe-extend": Recipe(
        "longrecipe-extend", "Hu et al. 2024, arXiv 2409.00509, App. A Tab. 4 and zhiyuanhubj/LongRecipe (stage 0: extension)",
        method="abf", strategy="longrecipe", train_at="0.3", data="text", learning_rate=5e-5, schedule="constant",
        warmup_steps=0, epochs=1, max_steps=-1, batch_size=96, adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.1,
        max_grad_norm=1.0, samples=0, min_tokens_fraction=0.0),
    "longrecipe-replay": Recipe(
        "longrecipe-replay", "Hu et al. 2024, arXiv 2409.00509 §4.3 and zhiyuanhubj/LongRecipe (stage 1: replay, lr 5e-6 = stage 0's / 10)",
        method="abf", strategy="contiguous", train_at="native", data="chat", learning_rate=5e-6, schedule="constant",
        warmup_steps=0, epochs=1, max_steps=-1, batch_size=96, adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.1,
        max_grad_norm=1.0, samples=96, min_tokens_fraction=0.0),
    "longlora": Recipe(
        "longlora", "Chen et al. 2024, arXiv 2309.12307; dvlab-research/LongLoRA fine-tune.py and README command",
        method="linear", strategy="contiguous", train_at="target", data="text", learning_rate=2e-5,
        schedule="constant_with_warmup", warmup_steps=20, epochs=1, max_steps=1000, batch_size=64, adam_beta1=0.9,
        adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0, samples=0, min_tokens_fraction=0.0, attention="s2",
        lora_r=8, lora_alpha=16, lora_targets="q_proj,k_proj,v_proj,o_proj"),
    "smoke": Recipe(
        "smoke", "a pipeline check for CPUs (a few steps, a high learning rate), not a quality recipe",
        method="eabf", strategy="contiguous", train_at="target", data="chat", learning_rate=1e-4, schedule="constant",
        warmup_steps=0, epochs=1, max_steps=4, batch_size=2, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, samples=8, min_tokens_fraction=0.0),
}


RECIPES["longrecipe"] = replace(RECIPES["longrecipe-extend"], name="longrecipe",
                                source="Hu et al. 2024, arXiv 2409.00509 (extension on 30% of the target, replay, merge)")


def get_recipe(name: str, **overrides) -> Recipe:
    if name not in RECIPES:
        raise RopekitError(f"unknown recipe {name!r}", f"use one of: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    unknown = sorted(set(overrides) - set(asdict(recipe)))
    if unknown:
        raise RopekitError(f"unknown recipe field {unknown[0]!r}", f"valid fields: {', '.join(asdict(recipe))}")
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
