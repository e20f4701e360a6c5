"""Training throughput: ropekit's training step against plain transformers run two ways, interleaved in one process.

    python benchmarks/train_throughput.py                          # one GPU: TinyLlama-1.1B shape, 16K and 32K
    python benchmarks/train_throughput.py --lengths 32k --resume   # one length, keeping the file's rows of others
    python benchmarks/train_throughput.py --shape smollm2-135m --lengths 2k --steps 3 --warmup 1   # CPU-sized
    python benchmarks/train_throughput.py --smoke --json /tmp/x.json    # tiny shapes, seconds on a CPU

Method. Every variant trains the same random-weight model (the shape's config, fp32 master weights) at batch 1: one
forward and backward, gradients clipped to norm 1 (the Trainer's default max_grad_norm), one AdamW step; bf16
autocast on a GPU (the Trainer's bf16=True). The variants of a group are separate model instances sharing one set
of parameters and one set of AdamW moments, so the memory resident between steps is that of a single training run
— a fit-or-checkpoint decision made here is the one a real run would make — and the variants can be timed in
rounds: warm-up steps, then --steps rounds of one step each, the order reversed every other round
(_common.measure_interleaved). What the shared weights train to means nothing (every optimizer updates them); the
work of each step is the real one. Step times are medians; a ratio between two variants is taken per round and
reported as the median with min/max and a bootstrap 95% interval (_common.paired_ratio).
--budget: a variant is not built when less time is left than a few steps of the one before; after the warm-ups the
group's rounds stop at the budget (fewer than 3 rounds: the rows say "skipped"/"partial"). Rows are written to the
results file as they are decided and after every round, so a killed call keeps them.

Headline group (the summary):
  hf               plain transformers as most users run it: SDPA, gradient checkpointing on, standard AdamW (torch's
                   default foreach implementation: optim="adamw_torch"), loss from full logits. The Trainer's own
                   default optim in transformers 5 is the fused one: +fused-adamw below shows what that alone is worth
  hf-best          plain transformers at its best flags: use_liger_kernel (liger's fused linear cross-entropy,
                   RMSNorm, SwiGLU, RoPE; when installed and on a GPU), fused AdamW, gradient checkpointing only where
                   memory needs it: the step is tried without, and checkpointing turned on after an out-of-memory
                   (the row's "checkpointing" says which)
  ropekit          what `ropekit train` does (ropekit.training.api): EABF, liger-kernel when installed on a GPU else the
                   chunked loss (ropekit.training.memory), fused AdamW (ropekit leaves the Trainer's default optim), with
                   gradient checkpointing chosen like hf-best — `--no-gradient-checkpointing` where the step fits, as
                   the study's rows train
  ropekit-default  `ropekit train` without flags: as ropekit, gradient checkpointing on (TrainOptions' default); not
                   run when ropekit needed checkpointing itself (then it is the same variant)
Knob group (rows, no summary; run after the headline of every length, in the time --budget leaves): each knob alone
on top of hf, interleaved with hf. By default the knobs that separate hf from hf-best and ropekit: +eabf, +chunked,
+liger, +no-ckpt, +fused-adamw; with --knobs also +tiled (decoder MLPs in 8K-token tiles), +packing (the tokens as
4 documents with position resets: block-diagonal attention, which leaves SDPA's flash kernel; its gain, no padding,
does not exist on random tokens), +compile (each decoder layer under torch.compile) and +flash (flash_attention_2).
Attention: SDPA in every variant. flash-attn has no wheel that can be carried to the GPU machine, so +flash is
skipped there and the causal, unmasked variants run on SDPA's flash backend (FlashAttention-2's algorithm inside
PyTorch); the file records whether that backend was enabled.
MFU: model FLOPs per token as the anchors count them (_common.model_flops_per_token: 6·N_non-embedding + 6·V·d +
3.5 × the causal attention forward; recomputation not counted) × tokens/s, over the bf16 matmul peak measured at the
start of this run ("mfu") and over the device's spec dense bf16 peak ("mfu_spec": 989 TFLOP/s for H100/H200 SXM;
None for a device not in _common.PEAK_SPEC_BF16).
summary, per nominal length (16k, 32k): ratio_* = ropekit ÷ hf tokens/s and vs_best_* = ropekit ÷ hf-best, each
with *_ci (bootstrap 95%) and *_range (min, max over rounds); default_ratio_* (ropekit-default ÷ hf); mfu_* and
mfu_spec_* of ropekit; tokens_per_s_* and checkpointing_* of every headline variant.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import time

import torch
from _common import (SHAPES, Budget, Results, add_common_args, config_for, device_name, enable_checkpointing, free_memory, is_oom,
                     json_path, matmul_peak, measure_interleaved, model_flops_per_token, on_gpu, paired_ratio, peak_memory_gib,
                     reset_peak_memory, setup, spec_peak, stats)
from transformers.models.llama import modeling_llama

from ropekit.lengths import format_length, parse_lengths

ORIGINAL_ROPE = modeling_llama.apply_rotary_pos_emb  # before any liger patch in this process
LR = 1e-6  # small enough that random weights stay finite over many steps; the value does not change the work
BASE = {"eabf": False, "loss": "full", "ckpt": "on", "adamw": "standard", "tiled": False, "packing": False, "compile": False,
        "attn": "sdpa"}
HEADLINE = {
    "hf": {},
    "hf-best": {"loss": "liger-if-installed", "adamw": "fused", "ckpt": "if-needed"},
    "ropekit": {"eabf": True, "loss": "ropekit", "adamw": "fused", "ckpt": "if-needed"},
    "ropekit-default": {"eabf": True, "loss": "ropekit", "adamw": "fused"},
}
KNOBS = {"+eabf": {"eabf": True}, "+chunked": {"loss": "chunked"}, "+tiled": {"tiled": True}, "+liger": {"loss": "liger"},
         "+no-ckpt": {"ckpt": "off"}, "+fused-adamw": {"adamw": "fused"}, "+packing": {"packing": True},
         "+compile": {"compile": True}, "+flash": {"attn": "flash_attention_2"}}
DEFAULT_KNOBS = "+eabf,+chunked,+liger,+no-ckpt,+fused-adamw"  # what separates hf from hf-best and ropekit
SMOKE_KNOBS = DEFAULT_KNOBS + ",+tiled,+packing"  # every knob a CPU can run, so the dry run covers their code
NOMINAL = {"16k": 16384, "32k": 32768}  # the summary's lengths (a smoke run maps them to its stand-ins)


def liger_ready() -> bool:
    return on_gpu() and importlib.util.find_spec("liger_kernel") is not None


def resolve(settings: dict) -> dict:
    """The settings a variant runs with here: the loss rules of hf-best and `ropekit train` made concrete."""
    s = {**BASE, **settings}
    if s["loss"] == "liger-if-installed":
        s["loss"] = "liger" if liger_ready() else "full"
    elif s["loss"] == "ropekit":  # ropekit.training.stage: liger "auto" wins over the chunked loss
        s["loss"] = "liger" if liger_ready() else "chunked"
    return s


def why_not(s: dict) -> str | None:
    """Why resolved settings cannot run here, or None."""
    if s["loss"] == "liger" and not liger_ready():
        return "needs a GPU and liger-kernel"
    if s["attn"] == "flash_attention_2" and not (on_gpu() and importlib.util.find_spec("flash_attn")):
        return "needs a GPU and flash-attn (no carried wheel exists; SDPA's flash backend is what runs)"
    if s["compile"] and not on_gpu():
        return "torch.compile is measured on a GPU only (minutes of compilation on a CPU)"
    return None


@contextlib.contextmanager
def liger_restored():
    """liger-kernel also patches transformers' Llama module globally (RoPE function, RMSNorm and MLP classes, the
    causal-LM forward): put them back so instances built later in this process are plain transformers again."""
    saved = {name: getattr(modeling_llama, name) for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")}
    forward = modeling_llama.LlamaForCausalLM.forward
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(modeling_llama, name, value)
        modeling_llama.LlamaForCausalLM.forward = forward


def share_parameters(dst, src) -> None:
    """Make ``dst`` use ``src``'s parameter objects (same architecture), tied weights included."""
    modules = dict(src.named_modules(remove_duplicate=False))
    for name, module in dst.named_modules(remove_duplicate=False):
        for key in list(module._parameters):
            module._parameters[key] = modules[name]._parameters[key]


def make_adamw(params, kind: str):
    if kind == "fused":
        return torch.optim.AdamW(params, lr=LR, fused=True)
    return torch.optim.AdamW(params, lr=LR)  # torch's default: foreach on a GPU, what optim="adamw_torch" builds


class Variant:
    """One variant: a model instance (parameters shared with ``shared`` when given), its optimizer and its step."""

    def __init__(self, name: str, settings: dict, config, length: int, shared: "Variant | None" = None):
        import ropekit
        from transformers import AutoModelForCausalLM

        from ropekit.training.memory import make_chunked_loss, tile_mlp

        self.name, self.s, self.length = name, resolve(settings), length
        self.device = "cuda" if on_gpu() else "cpu"
        torch.manual_seed(0)
        with torch.device(self.device):
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32, attn_implementation=self.s["attn"])
        if shared is not None:
            share_parameters(model, shared.model)
            free_memory()
        if self.s["eabf"]:
            ropekit.extend(model, "eabf", target_length=max(length, 4 * config.max_position_embeddings))
        self.rope = ORIGINAL_ROPE
        if self.s["loss"] == "liger":
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            with liger_restored():
                _apply_liger_kernel_to_instance(model=model)  # what the Trainer does with use_liger_kernel=True
                self.rope = modeling_llama.apply_rotary_pos_emb
        if self.s["tiled"]:
            tile_mlp(model, 8192)
        self.checkpointing = "on" if self.s["ckpt"] == "on" else "off"
        if self.s["ckpt"] == "on":
            enable_checkpointing(model)
        if self.s["compile"]:
            for layer in model.model.layers:
                layer.compile()
        model.config.use_cache = False
        model.train()
        self.model = model
        self.params = list(model.parameters())
        self.optimizer = make_adamw(self.params, self.s["adamw"])
        self.loss_fn = make_chunked_loss(model) if self.s["loss"] == "chunked" else None
        self.ids = torch.randint(0, config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1)).to(self.device)
        self.positions = torch.arange(length, device=self.device)[None]
        if self.s["packing"]:  # four documents in the row; transformers masks per document from the position resets
            self.positions = self.positions % -(-length // 4)
        self.peak_gib = None

    def step(self) -> None:
        modeling_llama.apply_rotary_pos_emb = self.rope  # a module global: each variant sets its own (also for recompute)
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=on_gpu()):
            if self.loss_fn is None:
                loss = self.model(input_ids=self.ids, position_ids=self.positions, labels=self.ids).loss
            else:  # the chunked loss reads the final hidden states; logits_to_keep=1 keeps full logits from existing
                out = self.model(input_ids=self.ids, position_ids=self.positions, output_hidden_states=True, logits_to_keep=1)
                loss = self.loss_fn(out, self.ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def try_step(self) -> bool:
        """One step; False (memory freed, gradients dropped) when it runs out of memory."""
        try:
            self.step()
            return True
        except Exception as err:
            if not is_oom(err):
                raise
        self.optimizer.zero_grad(set_to_none=True)  # outside the handler: the traceback no longer holds activations
        free_memory()
        return False

    def warm_up(self, steps: int) -> float:
        """Settle checkpointing ("if-needed": without, unless that runs out of memory), run warm-up steps, then one
        step that records peak memory; returns that step's seconds."""
        if self.s["ckpt"] == "if-needed":
            if self.try_step():
                self.checkpointing = "off: the step fits"
            else:
                enable_checkpointing(self.model)
                self.checkpointing = "on: out of memory without"
        for _ in range(steps):
            self.step()
        reset_peak_memory()
        start = time.perf_counter()
        self.step()
        if on_gpu():
            torch.cuda.synchronize()
        self.peak_gib = peak_memory_gib()
        return time.perf_counter() - start


def adopt_moments(v: Variant, first: Variant) -> None:
    """Create ``v``'s AdamW state, then give it ``first``'s moments: the optimizers of a group read and write as
    many bytes as with their own, and only one set stays resident (two at most, for a moment, here)."""
    for p in v.params:
        p.grad = torch.zeros_like(p)
    v.optimizer.step()  # zero gradients leave the moments at zero
    if v is not first:
        for p in v.params:
            for key in ("exp_avg", "exp_avg_sq"):
                v.optimizer.state[p][key] = first.optimizer.state[p][key]
    v.optimizer.zero_grad(set_to_none=True)
    free_memory()


def _status(err: Exception) -> str:
    return "out of memory" if is_oom(err) else f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def run_group(group: str, specs: dict, config, length: int, ctx: dict) -> dict[str, dict]:
    """Build, warm up and time one group of variants interleaved; every row goes to the results file as it is
    decided (skipped, failed, after each timed round, finished). Returns the rows by variant."""
    results, budget, args = ctx["results"], ctx["budget"], ctx["args"]
    flops = model_flops_per_token(config, length)
    guess = flops * length * 4 / 3 / (0.35 * ctx["peak"])  # a checkpointed step at 35% of the matmul peak, until one is timed
    rows, variants, warm = {}, {}, {}

    def add(name, settings, **fields):
        rows[name] = results.add({"variant": name, "group": group, "length": length, "shape": ctx["shape"], "settings": settings, **fields})
        if not fields["status"].startswith(("ok", "partial")):
            print(f"{format_length(length):>7} {group:<8} {name:<16} {fields['status']}", flush=True)

    try:
        for name, settings in specs.items():
            s = resolve(settings)
            why = why_not(s)
            if why is None and budget.left() <= (args.warmup + 2) * max(warm.values(), default=guess):
                why = f"time budget ({budget.left():.0f} s left)"
            if why is None and name == "ropekit-default" and variants.get("ropekit") and variants["ropekit"].checkpointing.startswith("on"):
                why = "the same variant as ropekit (which needed gradient checkpointing)"
            if why:
                add(name, s, status=f"skipped: {why}")
                continue
            failed = None
            try:
                base = next(iter(variants.values()), None)
                variants[name] = Variant(name, s, config, length, shared=base)
                adopt_moments(variants[name], base or variants[name])
                warm[name] = variants[name].warm_up(args.warmup)
            except Exception as err:
                failed = _status(err)
            if failed:  # out of the handler, so that its traceback no longer holds the failed step's tensors
                variants.pop(name, None)
                for v in variants.values():
                    v.optimizer.zero_grad(set_to_none=True)  # a step cut short leaves gradients on the shared weights
                free_memory()
                add(name, s, status=failed)
        if not variants:
            return rows
        round_s = sum(warm.values())
        min_rounds = min(3, args.steps)
        if budget.left() < min_rounds * round_s:
            for name, v in variants.items():
                add(name, v.s, status=f"skipped: time budget ({budget.left():.0f} s left, a round takes {round_s:.1f} s)",
                    checkpointing=v.checkpointing, peak_gib=v.peak_gib)
            return rows
        for name, v in variants.items():
            add(name, v.s, status="partial: 0 rounds", checkpointing=v.checkpointing, peak_gib=v.peak_gib, step=None)

        def record(times):
            for name, t in times.items():
                rows[name].update(status=f"partial: {len(t)} rounds", **_speed(t, length, flops, ctx))
            results.write()

        timed = {}
        try:
            deadline = time.time() + budget.left()
            timed = measure_interleaved({n: v.step for n, v in variants.items()}, repeats=args.steps, warmup=0,
                                        deadline=deadline, on_round=record)
        except Exception as err:  # e.g. an out-of-memory from fragmentation mid-run: the rounds so far stay in the rows
            for name in variants:
                rows[name]["status"] = f"{_status(err)} (after {rows[name]['status'].removeprefix('partial: ')})"
            results.write()
            return rows
        reference, best = timed.get("hf"), timed.get("hf-best")
        for name, t in timed.items():
            row = rows[name]
            row["status"] = "ok" if t and t["n"] >= min_rounds else f"partial: {t['n'] if t else 0} rounds (time budget)"
            if t is None:
                continue
            if reference and name != "hf":
                row["vs_hf"] = paired_ratio(reference["times_s"], t["times_s"])
            if best and name.startswith("ropekit"):
                row["vs_hf_best"] = paired_ratio(best["times_s"], t["times_s"])
            _print(row)
        results.write()
        return rows
    finally:
        variants.clear()
        modeling_llama.apply_rotary_pos_emb = ORIGINAL_ROPE
        free_memory()


def _speed(times: list[float], length: int, flops: float, ctx: dict) -> dict:
    t = stats(list(times))  # a copy: the caller keeps appending to its list
    if t is None:
        return {"step": None}
    speed = length / t["median_s"]
    spec = ctx["spec_peak"]
    return {"step": t, "tokens_per_s": speed, "mfu": flops * speed / ctx["peak"], "mfu_spec": flops * speed / spec if spec else None,
            "peak_tflops": ctx["peak"] / 1e12}


def _print(row: dict) -> None:
    ratio = (row.get("vs_hf") or {}).get("median")
    best = (row.get("vs_hf_best") or {}).get("median")
    print(f"{format_length(row['length']):>7} {row['group']:<8} {row['variant']:<16} {row['step']['median_s']:>8.3f} "
          f"{row['step']['spread']:>7.1%} {row['tokens_per_s']:>9.0f} {row['mfu']:>6.1%} "
          f"{ratio if ratio is not None else float('nan'):>6.3f} {best if best is not None else float('nan'):>6.3f} "
          f"{row['peak_gib'] if row['peak_gib'] is not None else float('nan'):>6.1f}  ckpt {row['checkpointing']}  {row['status']}", flush=True)


def summarize(rows: list[dict], nominal: dict) -> dict:
    """The summary from the rows (also those kept from an earlier call with --resume): finished headline rows only."""
    summary = {}
    for tag, length in nominal.items():
        mine = {r["variant"]: r for r in rows if r["length"] == length and r.get("group") == "headline" and r["status"] == "ok"}
        ropekit = mine.get("ropekit", {})
        for key, field in (("ratio", "vs_hf"), ("vs_best", "vs_hf_best")):
            pair = ropekit.get(field)
            summary[f"{key}_{tag}"] = pair["median"] if pair else None
            summary[f"{key}_{tag}_ci"] = [pair["lo"], pair["hi"]] if pair else None
            summary[f"{key}_{tag}_range"] = [pair["min"], pair["max"]] if pair else None
        default = mine.get("ropekit-default", {}).get("vs_hf")
        summary[f"default_ratio_{tag}"] = default["median"] if default else None
        summary[f"mfu_{tag}"], summary[f"mfu_spec_{tag}"] = ropekit.get("mfu"), ropekit.get("mfu_spec")
        summary[f"tokens_per_s_{tag}"] = {name: r["tokens_per_s"] for name, r in mine.items()} or None
        summary[f"checkpointing_{tag}"] = {name: r["checkpointing"] for name, r in mine.items()} or None
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="GPU default tinyllama-1.1b, CPU smollm2-135m")
    parser.add_argument("--lengths", default=None, help="GPU default 16k,32k; CPU 2k")
    parser.add_argument("--steps", type=int, default=None, help="timed rounds of the headline group (GPU default 10, CPU 3)")
    parser.add_argument("--knob-steps", type=int, default=None, help="timed rounds of the knob group (GPU default 5, CPU 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps per variant, after the checkpointing trial and "
                        "before the step that records peak memory (so at least two untimed steps)")
    parser.add_argument("--knobs", default=DEFAULT_KNOBS, help=f"knob rows after the headline ('none' for none; all: {','.join(KNOBS)})")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of an existing results file for other lengths (e.g. 16K measured in an earlier call)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    gpu = on_gpu()
    nominal = dict(NOMINAL)
    if args.smoke:
        args.shape, args.lengths, args.steps, args.knob_steps, args.warmup = "tiny", "128,256", 3, 3, 1
        args.knobs = SMOKE_KNOBS if args.knobs == DEFAULT_KNOBS else args.knobs
        nominal = {"16k": 128, "32k": 256}
    args.steps = args.steps or (10 if gpu else 3)
    knob_steps = args.knob_steps or (5 if gpu else 3)
    knobs = [] if args.knobs.strip() == "none" else [k.strip() for k in args.knobs.split(",") if k.strip()]
    unknown = [k for k in knobs if k not in KNOBS]
    if unknown:
        raise SystemExit(f"unknown knob(s) {', '.join(unknown)}: use {', '.join(KNOBS)} or none")
    shape = args.shape or ("tinyllama-1.1b" if gpu else "smollm2-135m")
    lengths = parse_lengths(args.lengths or ("16k,32k" if gpu else "2k"))
    config = config_for(shape)
    results = Results("train_throughput", json_path(args, "train_throughput"), smoke=args.smoke,
                      stand_ins=nominal if args.smoke else None, keep_rows=args.resume)
    results.set("rows", [r for r in results.rows if r["length"] not in lengths])  # lengths measured now are measured anew
    budget = Budget(args.budget)
    peak, spec = matmul_peak(size=256 if args.smoke else None), spec_peak()
    results.set("peak_tflops", peak / 1e12)
    results.set("spec_peak_tflops", spec / 1e12 if spec else None)
    results.set("sdpa_flash_backend", torch.backends.cuda.flash_sdp_enabled() if gpu else None)
    results.set("liger_kernel", liger_ready())
    results.summarize(summarize(results.rows, nominal))
    print(f"training step, {shape} (random weights), batch 1; {device_name()}; matmul peak {peak / 1e12:.3g} TFLOP/s"
          f"{f', spec {spec / 1e12:.0f}' if spec else ''}; warm-up {args.warmup}, {args.steps} interleaved rounds; attention: "
          f"SDPA (flash-attn cannot be carried){'; liger-kernel' if liger_ready() else ''}")
    print(f"{'length':>7} {'group':<8} {'variant':<16} {'step s':>8} {'spread':>7} {'tok/s':>9} {'MFU':>6} {'÷hf':>6} {'÷best':>6} {'GiB':>6}")
    ctx = {"results": results, "budget": budget, "args": args, "shape": shape, "peak": peak, "spec_peak": spec}
    for length in lengths:
        run_group("headline", HEADLINE, config, length, ctx)
        results.summarize(summarize(results.rows, nominal))
    if knobs:
        ctx["args"] = argparse.Namespace(**{**vars(args), "steps": knob_steps})
        for length in lengths:
            run_group("knobs", {"hf": {}, **{k: KNOBS[k] for k in knobs}}, config, length, ctx)
    results.summarize({**summarize(results.rows, nominal), "goal_ratio": 1.5, "goal_mfu": 0.55})
    results.done()
    return results.data


if __name__ == "__main__":
    main()
