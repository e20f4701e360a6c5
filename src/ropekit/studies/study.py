"""``ropekit study``: every method under the same budget on one base model, then one evaluation — a miniature of
the EABF and CREAM papers' tables, reproducible by one command.

A preset's rows are grouped into named **slices** (``headline``, ``training-free``, …), each small enough to train
and evaluate in one short GPU window. Recipe for one slice, top to bottom: for each fine-tuned row,
``ropekit.training.api.train`` into ``DIR/<slice>/runs/<label>`` (skipped when already there, so an interrupted study resumes) →
one evaluation of the slice's rows (``DIR/<slice>/eval``, cached per task and length) → ``DIR/<slice>/results.json``
(each run with its training summary and loss log; a re-run row replaces its old entry). Then every slice found under
``DIR`` is merged into one report (``DIR/report.html``, ``DIR/report.md``, ``DIR/plots/``) and ``DIR/study.md``
with the goals checked against the merged numbers. Without ``--slice`` every slice runs in turn.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import RopekitError
from ..lengths import format_length, parse_length


@dataclass(frozen=True)
class Run:
    label: str
    method: str
    target: str
    train: bool = True
    recipe: str = "eabf-paper"
    strategy: str = "contiguous"
    options: dict = field(default_factory=dict)  # more TrainOptions fields


@dataclass(frozen=True)
class Slice:
    """Rows of a preset that run together and write their own ``results.json`` (``DIR/<name>/``); ``lengths`` and
    ``tasks`` default to the preset's."""

    name: str
    description: str
    labels: tuple[str, ...]
    lengths: tuple[int, ...] | None = None
    tasks: dict | None = None
    task_lengths: dict | None = None  # task → its own lengths (e.g. perplexity inside the native window too)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str
    runs: tuple[Run, ...]
    lengths: tuple[int, ...]
    tasks: dict
    common: dict  # TrainOptions shared by every trained run
    slices: tuple[Slice, ...] = ()  # rows in no slice form one more, named "other" ("all" when there are no slices)


# The budget: EABF-style runs get 100 synthetic conversations at the target length, 2 epochs, batch 32 (8 optimizer
# steps: 4 per epoch, the last of 4 samples; the paper's 100-sample row). Runs trained at the native 8K (CREAM, PoSE)
# get the nominal tokens of such a row (100 × target × 2): 6 steps of 4× (32K) or 8× (64K) × 32 samples of 8K. lr 2e-4: the paper's 2e-5 was chosen for 7B; on this 135M model
# 2e-4 is the first lever (shared/anchors.md).
# A 135M model trains at full speed: no gradient checkpointing (activations of one 64K micro-batch are ~40 GiB in bf16,
# inside an 80 GiB GPU) and no mid-run checkpoint saves; a row that cannot finish before its call's deadline stops
# after its last whole step and says so (TrainOptions.stop_at).
_GPU_COMMON = {"learning_rate": 2e-4, "precision": "bf16", "micro_batch_size": 1, "batch_size": 32, "gradient_checkpointing": False,
               "save_steps": 100_000}
_FT = {"samples": 100, "epochs": 2}
# Positions of the gold item for KV retrieval and LongChat-Lines: both ends (the U-shape) and three points in the middle
# third, where CREAM claims to beat PoSE ("lost in the middle").
_MIDDLE_THIRD = [0.375, 0.5, 0.625]
_POSITIONS = [0.0, *_MIDDLE_THIRD, 1.0]


def _eabf_style(label, method, target):
    return Run(label, method, target, recipe="eabf-paper", options=dict(_FT))


# LongLoRA (PI + S²-Attn + LoRA+) next to the same LoRA+ run with full attention, same data, length, steps and samples:
# checks the paper's claim that S²-Attn training, evaluated with full attention, matches full-attention training.
_LORA_PLUS = {"lora_r": 8, "lora_alpha": 16, "lora_targets": "q_proj,k_proj,v_proj,o_proj", "train_embeddings_and_norms": True}


def _longlora(label, target, attention, **options):
    return Run(label, "linear", target, recipe=options.pop("recipe", "eabf-paper"), options={**_LORA_PLUS, "attention": attention, **options})


def _native(label, method, target, strategy, factor):
    # the nominal tokens of 100 samples × 2 epochs at the target: 6 steps of 32·factor samples of 8K
    return Run(label, method, target, recipe="cream-paper", strategy=strategy,
               options={"samples": 6 * 32 * factor, "epochs": 1, "max_steps": 6, "warmup_steps": 0, "schedule": "cosine",
                        # micro-batches of 8 samples: at one 8K sample per micro-batch a 135M model ran at 27-29K
                        # tokens/s on one H100 (72 s per step at 64K's batch), far below what the GPU does
                        "batch_size": 32 * factor, "micro_batch_size": 8,
                        "strategy_params": {"sigma": "auto"} if strategy == "cream" else {}})


def _longrecipe(label, method, target, factor):
    # LongRecipe beside PoSE at the same stage-0 budget: PoSE's train length (8K, not the recipe's 30% of the target),
    # steps and samples; then its own replay (68/240 of those tokens, lr / 10) and merge with the original.
    pose = _native(label, method, target, "pose", factor)
    return Run(label, method, target, recipe="longrecipe", strategy="longrecipe", options={**pose.options, "train_length": "8k"})


PRESETS = {
    "smollm2-64k": Preset(
        "smollm2-64k", "SmolLM2-135M (8K native) to 32K and 64K: PI, NTK, YaRN, ABF, EABF fine-tuned at the target with 100 "
        "samples; CREAM and PoSE (with PI and YaRN) trained at 8K on the same number of tokens; LongLoRA (PI + S²-Attn + LoRA+) "
        "next to PI + LoRA+ with full attention at 64K; training-free rows for reference",
        "smollm2-135m",
        (
            Run("none", "none", "64k", train=False), Run("dynamic-free", "dynamic", "64k", train=False),
            Run("yarn-free", "yarn", "64k", train=False), Run("eabf-free", "eabf", "64k", train=False),
            Run("yarn-logscale-free", "yarn+logscale", "64k", train=False), Run("self-extend-free", "self_extend", "64k", train=False),
            *[_eabf_style(f"{m}-{t}", m, t) for t in ("32k", "64k") for m in ("linear", "ntk", "yarn", "abf", "eabf")],
            *[_native(f"{s}-{m}-{t}", m, t, s, f) for t, f in (("32k", 4), ("64k", 8)) for s in ("cream", "pose") for m in ("linear", "yarn")],
            *[_longrecipe(f"longrecipe-{m}-{t}", m, t, f) for t, f in (("32k", 4), ("64k", 8)) for m in ("linear", "yarn")],
            _longlora("pi-loraplus-64k", "64k", "full", **_FT), _longlora("longlora-64k", "64k", "s2", **_FT),
            # Beyond the paper, measured next to eabf-32k under the same budget:
            _eabf_style("yarn-logscale-32k", "yarn+logscale", "32k"),
            # The first lever after eabf-32k's perplexity collapse (docs/results.md): the same budget on the data mix
            # (half retrieval conversations, half plain text with loss on every token).
            Run("eabf-mix-32k", "eabf", "32k", recipe="eabf-mix", options=dict(_FT)),
            # The recipe chosen on CPU to keep the model (docs/training.md, "Recipes that keep the model"), same budget:
            Run("eabf-keep-32k", "eabf", "32k", recipe="eabf-keep", options=dict(_FT)),
            # EABF on the layers the entropy probe picks (the unextended model probed inside its window), same budget:
            Run("eabf-entropy-32k", "eabf", "32k", recipe="eabf-paper", options={**_FT, "method_params": {"layers": "entropy"}}),
        ),
        (4096, 8192, 16384, 32768, 65536),
        {"passkey": {"trials": 20, "batch_size": 4}, "niah": {"trials": 1, "batch_size": 5}, "ppl": {"windows": 3},
         "lines": {"trials": 4, "positions": _POSITIONS}, "kv": {"trials": 4, "positions": _POSITIONS}, "entropy": {"documents": 2}},
        _GPU_COMMON,
        (
            # The original (none) and the untrained EABF formula are read in the same protocol as the trained rows;
            # perplexity also at 4K and 8K (the 64K forward serves them), so "PPL at 64K ≤ the original's at 8K"
            # compares like with like.
            Slice("headline", "EABF fine-tuned at 32K (100 samples, 8 optimizer steps) and CREAM-YaRN trained at 8K for 64K, "
                  "beside the original and the untrained EABF formula, at 16K/32K/64K: passkey 20 trials, NIAH 10 depths, KV "
                  "retrieval in the middle third; perplexity (3 windows) at 4K-64K",
                  ("eabf-32k", "eabf-mix-32k", "cream-yarn-64k", "none", "eabf-free"), (16384, 32768, 65536),
                  {"passkey": {"trials": 20, "batch_size": 4}, "ppl": {"windows": 3}, "niah": {"trials": 1, "batch_size": 5},
                   "kv": {"trials": 4, "positions": _MIDDLE_THIRD}}, {"ppl": (4096, 8192, 16384, 32768, 65536)}),
            Slice("keep", "EABF fine-tuned at 32K with the recipe chosen to keep the model (eabf-keep), in the headline's "
                  "protocol (the original and eabf-mix-32k are in the headline slice)",
                  ("eabf-keep-32k",), (16384, 32768, 65536),
                  {"passkey": {"trials": 20, "batch_size": 4}, "ppl": {"windows": 3}, "niah": {"trials": 1, "batch_size": 5},
                   "kv": {"trials": 4, "positions": _MIDDLE_THIRD}}, {"ppl": (4096, 8192, 16384, 32768, 65536)}),
            Slice("training-free", "no training: dynamic NTK, YaRN, YaRN + log scale (the original and the EABF formula are "
                  "in the headline slice)", ("dynamic-free", "yarn-free", "yarn-logscale-free")),
            # Self-Extend runs its own fp32 attention (two full S×S logit matrices per layer): ~6 s per 32K forward and
            # ~24 s per 64K forward on one H100 (estimated, benchmarks/gpu/plan.py), so it gets 4K-32K and the core tasks.
            Slice("self-extend", "Self-Extend, training-free, at 4K-32K: passkey 20 trials, NIAH 10 depths, 3 PPL windows",
                  ("self-extend-free",), (4096, 8192, 16384, 32768),
                  {"passkey": {"trials": 20, "batch_size": 4}, "niah": {"trials": 1, "batch_size": 5}, "ppl": {"windows": 3}}),
            Slice("finetuned-32k", "fine-tuned at 32K with the EABF paper's budget (100 samples, 8 steps): PI, NTK, YaRN, ABF, "
                  "YaRN + log scale, and EABF on the layers the entropy probe picks, next to eabf-32k (in the headline slice)",
                  ("linear-32k", "ntk-32k", "yarn-32k", "abf-32k", "yarn-logscale-32k", "eabf-entropy-32k")),
            Slice("rest-64k", "fine-tuned at 64K (PI, NTK, YaRN, ABF, EABF); CREAM and PoSE trained at 8K: with PI for 64K, "
                  "PoSE-YaRN for 64K (CREAM-YaRN's comparison), and the 32K rows; LongLoRA (PI + S²-Attn + LoRA+) next to "
                  "PI + LoRA+ with full attention at 64K; LongRecipe (PI, YaRN) at PoSE's stage-0 budget",
                  ("linear-64k", "ntk-64k", "yarn-64k", "abf-64k", "eabf-64k", "cream-linear-64k", "pose-linear-64k", "pose-yarn-64k",
                   "cream-linear-32k", "cream-yarn-32k", "pose-linear-32k", "pose-yarn-32k", "pi-loraplus-64k", "longlora-64k",
                   "longrecipe-linear-32k", "longrecipe-yarn-32k", "longrecipe-linear-64k", "longrecipe-yarn-64k")),
        ),
    ),
    "smollm2-cpu-smoke": Preset(
        "smollm2-cpu-smoke", "the same pipeline at CPU scale: 16K targets, training at 1K tokens for 2 steps on 4 samples, "
        "evaluation at 2K and 9K with a few trials (PI full fine-tuning, PI + LoRA+ and LongLoRA with S²-Attn side by side); "
        "proves every stage runs, measures nothing about quality",
        "smollm2-135m",
        (
            Run("none", "none", "16k", train=False),
            Run("eabf-16k", "eabf", "16k", recipe="smoke", options={"samples": 4, "train_length": "1k", "max_steps": 2}),
            Run("cream-linear-16k", "linear", "16k", recipe="cream-paper", strategy="cream",
                options={"train_length": "1k", "max_steps": 2, "warmup_steps": 0, "batch_size": 2, "samples": 4}),
            Run("pose-linear-16k", "linear", "16k", recipe="cream-paper", strategy="pose",
                options={"train_length": "1k", "max_steps": 2, "warmup_steps": 0, "batch_size": 2, "samples": 4}),
            Run("longrecipe-linear-16k", "linear", "16k", recipe="longrecipe", strategy="longrecipe",
                options={"train_length": "1k", "max_steps": 2, "warmup_steps": 0, "batch_size": 2, "samples": 4, "replay_length": "1k"}),
            Run("pi-16k", "linear", "16k", recipe="smoke", options={"samples": 4, "train_length": "1k", "max_steps": 2}),
            _longlora("pi-loraplus-16k", "16k", "full", recipe="smoke", samples=4, train_length="1k", max_steps=2),
            _longlora("longlora-16k", "16k", "s2", recipe="smoke", samples=4, train_length="1k", max_steps=2, s2_min_length=0),
        ),
        (2048, 9216),
        {"passkey": {"trials": 10}, "niah": {"depths": [0.5]}, "ppl": {"windows": 1}, "kv": {"trials": 1, "positions": [0.5]},
         "entropy": {"documents": 1, "queries": 32}},
        {"learning_rate": 1e-4, "precision": "fp32", "micro_batch_size": 1, "batch_size": 2, "save_steps": 1000},
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise RopekitError(f"unknown study preset {name!r}", f"use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_slices(preset: Preset) -> list[Slice]:
    """The preset's slices, plus one named ``other`` with the rows no slice lists (``all`` when there are no slices)."""
    listed = {label for s in preset.slices for label in s.labels}
    rest = tuple(r.label for r in preset.runs if r.label not in listed)
    extra = [Slice("all" if not preset.slices else "other", "every row of the preset" if not preset.slices
                   else "rows not listed in a slice", rest)] if rest else []
    return [*preset.slices, *extra]


def get_slice(preset: Preset, name: str) -> Slice:
    slices = preset_slices(preset)
    for candidate in slices:
        if candidate.name == name:
            return candidate
    raise RopekitError(f"preset {preset.name} has no slice {name!r}", f"use one of: {', '.join(s.name for s in slices)}")


def study(preset: str = "smollm2-64k", output: str | Path = "ropekit-study", device: str = "auto", only: list[str] | None = None,
          progress: bool = True, slice_name: str | None = None, report_only: bool = False, train_only: bool = False,
          stop_at: float | None = None, eval_reserve: float = 0.0) -> dict | None:
    """Run (or resume) one slice of a preset (``slice_name``), or every slice in turn; then merge every slice found in
    ``output`` into the report and ``study.md``. ``only``: run just these rows (of the slice), trained and evaluated in
    that order. ``report_only``: run nothing, only merge and render. ``train_only``: train the rows and stop (None is
    returned); a later run evaluates them. ``stop_at`` (a ``time.time()`` value): no training step or evaluation step
    starts that would end after it; training keeps ``eval_reserve`` seconds before it for the evaluation. Returns the
    merged results."""
    chosen = get_preset(preset)
    out = Path(output).expanduser()
    if not report_only:
        slices = [get_slice(chosen, slice_name)] if slice_name else preset_slices(chosen)
        if only:
            allowed = {label for s in slices for label in s.labels}
            missing = [label for label in only if label not in allowed]
            if missing:
                where = f"slice {slice_name}" if slice_name else f"preset {preset}"
                raise RopekitError(f"{where} has no run {missing[0]!r}", f"choose from: {', '.join(sorted(allowed))}")
            slices = [s for s in slices if set(s.labels) & set(only)]
        for part in slices:
            run_slice(chosen, part, out / part.name, device=device, only=only, progress=progress, train_only=train_only,
                      stop_at=stop_at, eval_reserve=eval_reserve)
    return None if train_only else write_report(chosen, out)


def run_slice(preset: Preset, part: Slice, directory: Path, device: str = "auto", only: list[str] | None = None,
              progress: bool = True, train_only: bool = False, stop_at: float | None = None, eval_reserve: float = 0.0) -> dict | None:
    """Train the slice's rows that are not trained yet (continuing from a checkpoint an interrupted run left), evaluate
    them, and add them to ``directory/results.json``. Rows run in the order of ``only`` (else the slice's)."""
    from ..eval.merge import merge_results
    from ..eval.runner import RunSpec, _write_json, evaluate
    from ..training.api import TrainOptions, train

    order = list(only) if only else list(part.labels)
    runs = sorted((r for r in preset.runs if r.label in part.labels and r.label in order), key=lambda r: order.index(r.label))
    train_stop = None if stop_at is None else stop_at - eval_reserve
    for run in runs:
        target_dir = directory / "runs" / run.label
        if not run.train or (target_dir / "training_summary.json").exists():
            continue
        # the study evaluates every row itself, in its own protocol: no before/after check inside the training run
        options = {"check": False, **preset.common, **run.options}
        # an interrupted run continues: its checkpoints, or LongRecipe's started stages (OUT/stage0/checkpoint-*, …)
        resume = any(target_dir.glob("checkpoint-*")) or (run.recipe == "longrecipe" and (target_dir / "stage0").is_dir())
        train(TrainOptions(model=preset.model, method=run.method, target_length=run.target, output=target_dir, recipe=run.recipe,
                           strategy=run.strategy, device=device, progress=progress, overwrite=not resume, resume=resume,
                           stop_at=train_stop, **options))
    if train_only:
        return None
    specs = [RunSpec(preset.model, None if r.method == "none" else r.method, {}, r.target, label=r.label) if not r.train
             else RunSpec(str(directory / "runs" / r.label), label=r.label) for r in runs]
    results = evaluate(specs, part.tasks or preset.tasks, list(part.lengths or preset.lengths), directory / "eval", device=device,
                       kind="study", progress=progress, task_lengths=part.task_lengths, stop_at=stop_at)
    results.pop("path", None)
    for entry in results["runs"]:
        entry["slice"] = part.name
        summary = directory / "runs" / entry["label"] / "training_summary.json"
        if summary.exists():
            log = summary.with_name("training_log.jsonl")
            entry["training"] = {**json.loads(summary.read_text()),
                                 "log": [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []}
    canonical = directory / "results.json"
    if canonical.exists():  # rows run earlier (e.g. in another GPU window) stay; a re-run row replaces its old entry
        results = merge_results([(part.name, json.loads(canonical.read_text())), (part.name, results)], replace=True)
    results.update({"preset": preset.name, "slice": part.name})
    _write_json(canonical, results)
    return results


def write_report(preset: Preset, directory: str | Path) -> dict:
    """Merge every ``directory/<slice>/results.json``; write the report (tables, plots) and ``study.md``."""
    from ..eval.merge import load_merged
    from .report import render

    directory = Path(directory).expanduser()
    merged = load_merged(directory)
    render(directory)
    (directory / "study.md").write_text(summary_markdown(preset, merged))
    merged["path"] = str(directory / "report.md")
    return merged


# ------------------------------------------------------------------------------------------------------ goal checks


def _run(results, label):
    return next((r for r in results["runs"] if r["label"] == label), None)


def _score(results, label, task, length):
    from ..eval.runner import score_of

    run = _run(results, label)
    return None if run is None else score_of(run, task, length)


def _fmt(value, digits: int = 0) -> str:
    return "not run" if value is None else f"{value:.{digits}f}"


def _verdict(ok) -> str:
    return "not measured yet" if ok is None else ("met" if ok else "**missed**")


def _middle_third(results, label, task, length, positions=None):
    """Mean accuracy over the gold positions in [1/3, 2/3] (restricted to ``positions`` when given)."""
    run = _run(results, label)
    data = (run or {}).get("results", {}).get(task, {}).get(str(length))
    if not data:
        return None, set()
    middle = {p: v for p, v in data["positions"].items() if 1 / 3 <= float(p) <= 2 / 3 and (positions is None or p in positions)}
    return (sum(middle.values()) / len(middle) if middle else None), set(middle)


def _native_ppl(results):
    return _score(results, "none", "ppl", 8192)


def goal_checks(results: dict) -> list[str]:
    """The goals of the 64K study, checked against the merged numbers; a row or length not measured yet says so."""
    lines = []
    native_ppl = _native_ppl(results)
    for label in ("eabf-32k", "eabf-mix-32k", "eabf-64k"):
        run = _run(results, label)
        if run is None:
            lines.append(f"- **{label}**: not run yet")
            continue
        checks = []
        for n in (16384, 32768, 65536):
            pk = _score(results, label, "passkey", n)
            cells = (run["results"].get("niah", {}).get(str(n)) or {}).get("depths")
            worst = min(cells.values()) if cells else None
            checks.append(f"passkey @{format_length(n)} {_fmt(pk)} (goal 100: {_verdict(None if pk is None else pk >= 100)}); "
                          f"worst NIAH cell {_fmt(worst)} (goal ≥ 90: {_verdict(None if worst is None else worst >= 90)})")
        ppl = _score(results, label, "ppl", 65536)
        ok = None if ppl is None or native_ppl is None else ppl <= native_ppl
        original = _run(results, "none")
        where = (original or {}).get("environment", {}).get("device")
        elsewhere = f", the original measured on {where}" if where and where != run.get("environment", {}).get("device") else ""
        checks.append(f"PPL @64K {_fmt(ppl, 1)} vs the original's @8K {_fmt(native_ppl, 1)}{elsewhere} (goal ≤: {_verdict(ok)})")
        training = run.get("training") or {}
        if training:
            gpu = "CUDA" in run.get("environment", {}).get("device", "")
            within = training["seconds"] <= 600 if gpu else None
            checks.append(f"training {training['seconds']:.0f} s on {run['environment']['device']} "
                          f"(goal ≤ 10 GPU-minutes: {_verdict(within) if gpu else 'not a GPU run'})")
        lines.append(f"- **{label}**: " + "; ".join(checks))
    for target in ("64k", "32k"):
        for method in ("yarn", "linear"):
            cream, pose = f"cream-{method}-{target}", f"pose-{method}-{target}"
            if _run(results, cream) is None:
                continue
            checks = []
            for n in (32768, 65536):
                pk = _score(results, cream, "passkey", n)
                checks.append(f"passkey @{format_length(n)} {_fmt(pk)} (goal ≥ 95: {_verdict(None if pk is None else pk >= 95)})")
            for task in ("kv", "lines"):
                n = parse_length(target)
                _, cream_positions = _middle_third(results, cream, task, n)
                _, pose_positions = _middle_third(results, pose, task, n)
                common = cream_positions & pose_positions
                c, _ = _middle_third(results, cream, task, n, common)
                p, _ = _middle_third(results, pose, task, n, common)
                if c is not None or p is not None:
                    ok = None if c is None or p is None else c >= p
                    verdict = "tie" if c is not None and c == p else _verdict(ok)  # equal scores (e.g. both 0) decide nothing
                    checks.append(f"{task} middle third @{format_length(n)} {_fmt(c)} vs {pose} {_fmt(p)} (goal ≥: {verdict})")
            lines.append(f"- **{cream}**: " + "; ".join(checks))
    return lines


def ordering_table(results: dict) -> list[str]:
    """The papers' ordering in miniature — fine-tuned EABF ≥ ABF > PI, YaRN — at 4× (32K) and 8× (64K), checked."""
    lines = ["| target | metric | eabf | abf | linear (PI) | yarn | EABF ≥ ABF > PI, YaRN |", "|---|---|---|---|---|---|---|"]
    for target, factor in (("32k", "4×"), ("64k", "8×")):
        n = parse_length(target)
        for task, better in (("passkey", max), ("ppl", min)):
            values = {m: _score(results, f"{m}-{target}", task, n) for m in ("eabf", "abf", "linear", "yarn")}
            if any(v is None for v in values.values()):
                verdict = "not measured yet"
            else:
                def beats(a, b, strict):
                    return (a > b if strict else a >= b) if better is max else (a < b if strict else a <= b)
                verdict = "confirmed" if (beats(values["eabf"], values["abf"], False) and beats(values["abf"], values["linear"], True)
                                          and beats(values["abf"], values["yarn"], True)) else "refuted"
            digits = 1 if task == "ppl" else 0
            lines.append(f"| {target} ({factor}) | {task} @{format_length(n)} | " + " | ".join(_fmt(values[m], digits) for m in values)
                         + f" | {verdict} |")
    return lines


def beyond_table(results: dict) -> list[str]:
    """Beyond the paper: YaRN + log scale (and EABF on the layers the entropy probe picks) next to EABF, at 32K."""
    labels = [label for label in ("eabf-32k", "eabf-mix-32k", "yarn-logscale-32k", "eabf-entropy-32k", "eabf-free", "yarn-logscale-free")
              if _run(results, label) is not None]
    if not labels:
        return ["not measured yet"]
    lengths = (16384, 32768, 65536)
    lines = ["| run | " + " | ".join(f"passkey {format_length(n)}" for n in lengths) + " | "
             + " | ".join(f"PPL {format_length(n)}" for n in lengths) + " |", "|---|" + "---|" * 2 * len(lengths)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(_fmt(_score(results, label, "passkey", n)) for n in lengths) + " | "
                     + " | ".join(_fmt(_score(results, label, "ppl", n), 1) for n in lengths) + " |")
    return lines


def summary_markdown(preset: Preset, results: dict) -> str:
    env = results["environment"]
    measured = {r["label"]: r for r in results["runs"]}
    lines = [f"# Study `{preset.name}`", "", preset.description + ".", "",
             f"- device: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, ropekit {env['ropekit']}",
             f"- commands: `{env['command']}`", f"- evaluation wall time (all slices): {results.get('seconds', 0):.0f} s", "",
             "## Slices", "", "| slice | rows | measured | not run yet |", "|---|---|---|---|"]
    for part in preset_slices(preset):
        done = [label for label in part.labels if label in measured]
        todo = [label for label in part.labels if label not in measured]
        lines.append(f"| {part.name} | {len(part.labels)} | {', '.join(done) or '-'} | {', '.join(todo) or '-'} |")
    lines += ["", "## Runs", "", "| label | slice | method | target | trained | recipe | strategy | options | training s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in preset.runs:
        entry = measured.get(run.label, {})
        seconds = (entry.get("training") or {}).get("seconds")
        lines.append(f"| {run.label} | {entry.get('slice', '-')} | {run.method} | {run.target} | {run.train} | "
                     f"{run.recipe if run.train else '-'} | {run.strategy if run.train else '-'} | "
                     f"`{json.dumps({**preset.common, **run.options}) if run.train else ''}` | {_fmt(seconds)} |")
    lines += ["", "## Goals", "", *goal_checks(results), "", "## The papers' ordering in miniature (checked, not required)", "",
              *ordering_table(results), "", "## Beyond the paper", "", *beyond_table(results), "",
              "Tables and plots of every task: `report.md` / `report.html` (all slices merged).", ""]
    return "\n".join(lines)


def preset_table(name: str) -> list[dict]:
    preset = get_preset(name)
    where = {label: part.name for part in preset_slices(preset) for label in part.labels}
    return [{**asdict(r), "slice": where[r.label]} for r in preset.runs]
