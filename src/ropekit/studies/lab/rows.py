"""The lab's rows and how one seed of the lab runs: the row table (:class:`Row`, :data:`ROWS`, :data:`ARMS`,
:func:`get_rows`), how each row is configured for the target (:func:`abf_theta_factor`, :func:`configured_params`,
:func:`configured_range`), the evaluation item sets (:data:`ITEM_SETS`, :func:`evaluation_seed`), the budgets
(:class:`Budget`, :data:`BUDGETS`; :func:`with_bind` adds the binding task), the cached pre-training (:func:`pretrained_dir`,
:func:`pretrain`), one row's extension and training (:func:`train_row`), one pre-training seed end to end
(:func:`run_seed`: pre-train → train every row → evaluate → report) and several seeds merged into one results dict
(:func:`combine`).

**Adding a row** is one line in :data:`ROWS` (label, method, arm, strategy, options); see the package docstring.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ...errors import RopekitError
from .data import BIND_MIX, SENTENCE_END_IDS, TEXT_SOURCES, VOCABULARY, Mix, lab_tokenizer
from .model import DEEP, LearningCurve, Schedule, Shape, lab_model, train_lab


# ----------------------------------------------------------------------------------------------------------------------
# The rows: every method under one budget, one line per row (label, method, arm, strategy, options).


@dataclass(frozen=True)
class Row:
    """One row of the lab table.

    ``arm``: ``free`` (training-free: the method applied to the pre-trained model), ``target`` (the method applied,
    then fine-tuned on sequences of the target length, 4× native) or ``native`` (the method applied, then trained on
    native-length sequences whose position ids ``strategy`` spreads over the target). ``params``: method parameters;
    ``strategy_params``: position-strategy parameters; ``trainer`` / ``dataset``: extra
    :class:`~ropekit.training.trainer.RopekitTrainer` / :class:`~ropekit.training.trainer.TrainingSet` arguments (e.g. a
    training-time attention, or the sentence ends :data:`SENTENCE_END_IDS` a strategy needs)."""

    label: str
    method: str
    arm: str
    strategy: str = "contiguous"
    params: dict = field(default_factory=dict)
    strategy_params: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)


ARMS = {"free": "training-free", "target": "fine-tuned at 4×", "native": "trained at the native window"}
# EABF's layers. The paper leaves layers 0–1 unscaled (``layers="auto"``, the method's default: the ``eabf`` and
# ``ft-eabf`` rows); its reference code scales every layer (``EABF``, the ``ft-eabf-all`` row); ``layers="entropy"``
# is ropekit's probe-chosen rule. On the 2-layer model (``--quick``) the paper's rule scales nothing (EABF = ABF),
# which is why the default budget's model has 4 layers (:data:`~ropekit.studies.lab.model.DEEP`).
EABF = {"layers": "all"}

ROWS = (
    Row("none", "none", "free"),
    Row("dynamic", "dynamic", "free"),
    Row("yarn", "yarn", "free"),
    Row("eabf", "eabf", "free"),
    Row("self-extend", "self_extend", "free"),
    Row("pi", "linear", "free"),  # training-free PI: the baseline of YaRN's training-free claim (YaRN > PI)
    Row("ft-control", "none", "target"),
    Row("ft-pi", "linear", "target"),
    Row("ft-yarn", "yarn", "target"),
    Row("ft-abf", "abf", "target"),
    Row("ft-eabf", "eabf", "target"),  # the paper's layer rule: layers 0–1 unscaled
    Row("ft-eabf-all", "eabf", "target", params=EABF),  # every layer scaled, as the reference code does
    Row("ft-eabf-entropy", "eabf", "target", params={"layers": "entropy"}),  # the layers the entropy probe picks
    Row("cream-pi", "linear", "native", strategy="cream"),
    Row("cream-yarn", "yarn", "native", strategy="cream"),
    Row("pose-pi", "linear", "native", strategy="pose"),
    Row("pose-yarn", "yarn", "native", strategy="pose"),
    Row("randpos", "none", "native", strategy="randpos"),
    # LongRecipe's stage 0 only (sentence-gapped positions; no replay or merge), beside pose-pi at the same budget
    Row("longrecipe-pi", "linear", "native", strategy="longrecipe", dataset={"sentence_ends": SENTENCE_END_IDS}),
    # LongLoRA's shifted sparse attention while training at 4× (full fine-tune here, no LoRA), beside ft-pi
    Row("longlora-pi", "linear", "target", trainer={"s2": {"group_ratio": 0.25}}),
)


def get_rows(labels: list[str] | None = None) -> list[Row]:
    if not labels:
        return list(ROWS)
    by_label = {r.label: r for r in ROWS}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        raise RopekitError(f"the lab has no row {unknown[0]!r}", f"choose from: {', '.join(by_label)}")
    return [by_label[label] for label in labels]


# ----------------------------------------------------------------------------------------------------------------------
# Every method configured for the length it is claimed at (the target factor)

# ABF's base for a target factor s: θ' = θ·50^(ln s / ln 4). Entropy-ABF (Zhang et al. 2024, Table 1; its reference
# code's _init_rope_new) fine-tunes Llama-2 from 4K to 16K (s = 4) with θ 10,000 → 500,000 (×50), ABF's base as
# Xiong et al. 2023 set it; neither paper derives the base from the length. The rule keeps exactly that ×50 at the
# paper's own factor, where the lab makes its claims, and grows the base as a power of s elsewhere (×1 at s = 1,
# ×7.1 at 2×, ×354 at 8×), so a lab run at another factor configures ABF for that factor as PI and YaRN are. Not the
# NTK-aware θ·s^(d/(d-2)) (×4.4 at 4× for head_dim 32): that is the smallest base stretching the longest wavelength
# by s, i.e. static NTK, a different method; ABF's papers use a far larger base on purpose.
ABF_PAPER_FACTOR = 4.0
ABF_PAPER_THETA_FACTOR = 50.0


def abf_theta_factor(factor: float) -> float:
    """ABF's base multiplier θ'/θ for a target factor: ``50 ** (ln factor / ln 4)`` (exactly 50 at 4×)."""
    if not factor >= 1:
        raise RopekitError(f"ABF's base rule needs a target factor ≥ 1, got {factor!r}", "use the budget's factor, e.g. 4")
    return float(ABF_PAPER_THETA_FACTOR ** (math.log(factor) / math.log(ABF_PAPER_FACTOR)))


def configured_params(row: Row, factor: float) -> dict:
    """The method parameters a row is extended with at ``factor``: the row's own, plus ABF's base by
    :func:`abf_theta_factor` for ``abf`` / ``eabf`` rows that set no base. PI, YaRN, dynamic NTK and Self-Extend
    take the same factor from the target length itself (``target_length = factor × native``)."""
    params = dict(row.params)
    if row.method in ("abf", "eabf") and params.get("theta") is None and params.get("theta_factor") is None:
        params["theta_factor"] = abf_theta_factor(factor)
    return params


def configured_range(row: Row, factor: int, native: int) -> str:
    """The lengths a row is configured for, as the robustness table names it."""
    target = f"{factor}× ({factor * native} tokens)"
    if row.method == "none" and row.arm == "free":
        return f"1× ({native} tokens): not extended"
    if row.method == "none":
        return f"RoPE unchanged (1×); trained for {target}" + ("" if row.arm == "target" else f" with {row.strategy} positions")
    if row.method == "dynamic":
        return f"θ grows with the input length (factor {factor}); no fixed range"
    extra = f", θ ×{abf_theta_factor(factor):g} by the ABF rule" if row.method in ("abf", "eabf") else ""
    how = {"free": "", "target": ", fine-tuned there", "native": f", {row.strategy} positions over it"}[row.arm]
    return f"up to {target}{extra}{how}"


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation items: a dev set for design, a test set per pre-training seed for the committed table

ITEM_SETS = ("dev", "test")
DEV_SEED = 0  # the items every design run so far was scored on (θ, the data mix, the --quick tables)
# Test items: evaluation seed 2000 + k for pre-training seed k. Seeds already taken: 0 (the lab's dev items),
# 1 (the pre-training learning curve; benchmarks/lab_keep_the_model.py's dev items), 1000 (that benchmark's test items).
TEST_SEED_BASE = 2000


def evaluation_seed(items: str, pretrain_seed: int) -> int:
    """The evaluation seed (the ``k`` of ``random.Random("lab-eval-…-k-…")``) of an item set for a pre-training seed:
    ``dev`` → 0 for every pre-training seed (the items design runs used); ``test`` → 2000 + the pre-training seed,
    so each seed gets its own items, never used by a design run."""
    if items not in ITEM_SETS:
        raise RopekitError(f"unknown item set {items!r}", f"choose one of: {', '.join(ITEM_SETS)}")
    if items == "dev":
        return DEV_SEED
    if pretrain_seed < 0:
        raise RopekitError(f"test items need a pre-training seed ≥ 0, got {pretrain_seed}", "use seeds such as 0,1,2")
    return TEST_SEED_BASE + pretrain_seed


# ----------------------------------------------------------------------------------------------------------------------
# Budgets


@dataclass(frozen=True)
class Budget:
    """What one lab run costs: the pre-training, the extension budget every trained row gets (the same tokens and
    optimizer steps: ``extend_steps`` × ``extend_tokens`` tokens, i.e. batch 8 at 4× or batch 32 at 1×), the
    evaluation grid (multiples of the native window), the evaluation sizes and the item set (``items``: ``dev`` for
    design and ``--quick``, ``test`` for the committed table; :func:`evaluation_seed`)."""

    name: str
    pretrain: Schedule
    extend_steps: int
    extend_learning_rate: float = 5e-4
    extend_warmup: int = 20
    extend_tokens: int = 4096
    factor: int = 4
    multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    tasks: dict = field(default_factory=dict)
    rows: tuple[str, ...] | None = None  # None: every row of ROWS
    curve_every: int = 500
    items: str = "test"
    shape: Shape = Shape()  # the lab model (the default budget's has 4 layers: EABF's layer rule needs them)
    seeds: tuple[int, ...] = (0, 1, 2)  # the pre-training seeds a run covers unless told otherwise

    def extend_schedule(self, length: int) -> Schedule:
        return Schedule(self.extend_steps, self.extend_tokens // length, length, self.extend_learning_rate, self.extend_warmup,
                        mix=self.pretrain.mix)


# lab-bind's evaluation: 12 pairs, 6 of them near misses of the asked key, 12 items per gold slot (144 per length).
# Tuned on dev items (benchmarks/lab_bind_tuning.py, pre-training seed 0 of the default budget): with the task's first
# setting (8 pairs, 4 near misses) ft-abf and ft-eabf scored 99% at 4×, at the ceiling; with 12 pairs and 6 near
# misses the unextended model keeps 93% inside its window, no compared row reaches 98% at 4× (the best 92%) and
# ft-abf vs ft-pi differ by 69 points. 16 pairs and 8 near misses were harder still (in-window 92%).
BIND_TASK = {"pairs": 12, "near": 6, "trials": 12, "batch_size": 12}


def with_bind(budget: Budget, mix: Mix = BIND_MIX, task: dict | None = None) -> Budget:
    """``budget`` with binding rows in its pre-training and extension mixture (``mix``) and ``lab-bind`` among its
    tasks (``task``: its options, :data:`BIND_TASK` by default), named ``<name>-bind``. The mixture is in the
    pre-training's cache key, so the model is pre-trained afresh."""
    return replace(budget, name=f"{budget.name}-bind", pretrain=replace(budget.pretrain, mix=mix),
                   tasks={**budget.tasks, "lab-bind": dict(BIND_TASK if task is None else task)})


_PRETRAIN = Schedule(steps=3000, batch=32, length=128, learning_rate=2e-3, warmup=100)
_DEFAULT = Budget("default", _PRETRAIN, extend_steps=200, multiples=(1, 2, 4, 8),
                  tasks={"lab-passkey": {"trials": 100, "batch_size": 10}, "lab-kv": {"trials": 12, "batch_size": 12},
                         "ppl": {"windows": 32, "tail": 64}})
BUDGETS = {
    # The committed table: the 4-layer model (EABF's layer rule), binding as the main task, 3 seeds, test items,
    # 1×–8× (8× for the robustness table; 16× was dropped to keep 3 seeds within 90 minutes on 2 cores).
    "default": replace(with_bind(_DEFAULT), name="default", shape=DEEP),
    # The smoke run: the 2-layer model, no binding, 5 rows, dev items, ≤ 5 minutes.
    "quick": Budget("quick", replace(_PRETRAIN, steps=1000), extend_steps=60, multiples=(1, 2, 4),
                    tasks={"lab-passkey": {"trials": 50, "batch_size": 10}, "lab-kv": {"trials": 4, "batch_size": 12},
                           "ppl": {"windows": 8, "tail": 64}},
                    rows=("none", "dynamic", "yarn", "self-extend", "cream-yarn"), curve_every=250, items="dev", seeds=(0,)),
}


# ----------------------------------------------------------------------------------------------------------------------
# The recipe, top to bottom


DATA_VERSION = 3  # bump when the generators change what a training row holds: cached pre-trainings are then redone


def pretrained_dir(budget: Budget, shape: Shape, seed: int) -> Path:
    """Where the pre-trained model of (budget, shape, seed) is cached: ``$ROPEKIT_CACHE/lab/<budget>-seed<k>-<hash>``.
    The hash covers everything that changes the weights, so a changed recipe never reuses a stale model."""
    from ...version import __version__
    from ...embedded import cache_dir

    schedule = {**asdict(budget.pretrain), "mix": budget.pretrain.mix.identity()}  # binding off: the key it always had
    recipe = {"shape": asdict(shape), "schedule": schedule, "vocabulary": VOCABULARY, "seed": seed,
              "text": TEXT_SOURCES, "data": DATA_VERSION, "ropekit": __version__, "torch": torch.__version__}
    stamp = hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir() / "lab" / f"{budget.name}-seed{seed}-{stamp}"


def pretrain(budget: Budget, shape: Shape | None = None, seed: int = 0, progress: bool = True) -> Path:
    """Pre-train the lab model (or find it in the cache); returns its directory (a checkpoint ``ropekit.load_model``
    loads, with the lab tokenizer). An interrupted pre-training resumes from its last checkpoint."""
    shape = shape or budget.shape
    out = pretrained_dir(budget, shape, seed)
    if (out / "lab_pretrain.json").is_file():
        return out
    _say(progress, f"lab: pre-training seed {seed} ({budget.pretrain.steps} steps) into {out}")
    tokenizer = lab_tokenizer()
    model = lab_model(shape, seed)
    curve = LearningCurve(tokenizer, shape.native, budget.curve_every, pairs=budget.tasks.get("lab-kv", {}).get("pairs", 9),
                          path=out / "lab_pretrain_progress.json")
    summary = train_lab(model, tokenizer, replace(budget.pretrain, length=shape.native), out, seed,
                        callbacks=[curve], save_steps=500, progress=progress)
    summary.update({"shape": asdict(shape), "parameters": sum(p.numel() for p in model.parameters()), "seed": seed,
                    "learning_curve": curve.rows, "threads": torch.get_num_threads(), "cost": curve.spent()})
    (out / "lab_pretrain.json").write_text(json.dumps(summary, indent=1))
    return out


def _cost(started: float, cpu: float) -> dict:
    """Wall and CPU (user+sys of this process, all threads) seconds since ``started`` / ``cpu``."""
    return {"seconds": round(time.time() - started, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}


def _say(progress: bool, message: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)


def train_row(row: Row, base: Path, budget: Budget, out: Path, seed: int, progress: bool = True) -> Path:
    """Extend the pre-trained model with ``row.method`` at 4× and train it under the row's arm; skipped when
    ``out`` already holds this row trained from this pre-trained model (else it is trained afresh)."""
    from ...extension import extend
    from ...models import load_model

    params = configured_params(row, budget.factor)
    done = out / "lab_row.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        if (kept.get("base") == str(base) and kept.get("row") == _as_json(asdict(row))  # compared as written (sets become lists)
                and kept.get("params", _as_json(row.params)) == _as_json(params)):
            return out
    if out.exists():
        shutil.rmtree(out)
    _say(progress, f"lab: {row.label}: {row.method} at {budget.factor}×, {ARMS[row.arm]}" + (f" ({row.strategy})" if row.strategy != "contiguous" else ""))
    started, cpu = time.time(), time.process_time()
    model, tokenizer = load_model(base, device="cpu" if not torch.cuda.is_available() else "auto", dtype="float32")
    native = model.config.max_position_embeddings
    target = budget.factor * native
    extend(model, row.method, target_length=target, tokenizer=tokenizer, **params)  # the tokenizer: layers="entropy" probes
    length = target if row.arm == "target" else native
    summary = train_lab(model, tokenizer, budget.extend_schedule(length), out, seed, strategy=row.strategy, target_length=target,
                        strategy_params=row.strategy_params, trainer=row.trainer, dataset=row.dataset, progress=progress)
    record = {"row": asdict(row), "params": params, "base": str(base), **summary, "cost": _cost(started, cpu)}
    (out / "lab_row.json").write_text(json.dumps(record, indent=1, default=_json_default))
    return out


def _json_default(value):
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def _as_json(value):
    """``value`` as it reads back from ``lab_row.json``."""
    return json.loads(json.dumps(value, default=_json_default))


def run_seed(budget: Budget, rows: list[Row], seed: int, out: Path, device: str = "auto", progress: bool = True,
             shape: Shape | None = None) -> dict:
    """One complete lab for one pre-training seed: pre-train (cached) → train every trained row → evaluate every
    row (resumable) on the budget's item set → report. Returns the results dict, with the lab's timings, the item set
    and its evaluation seed and each row's configuration under ``results["lab"]``."""
    from ...eval.runner import RunSpec, evaluate
    from ..report import render

    shape = shape or budget.shape
    out.mkdir(parents=True, exist_ok=True)
    base = pretrain(budget, shape, seed, progress)
    # what each stage cost when it ran (a cached stage reports its original cost)
    stages = {"pretrain": json.loads((base / "lab_pretrain.json").read_text())["cost"], "extend": {}}
    target = budget.factor * shape.native
    eval_seed = evaluation_seed(budget.items, seed)
    specs = []
    for row in rows:
        if row.arm == "free":
            specs.append(RunSpec(str(base), None if row.method == "none" else row.method, configured_params(row, budget.factor), target,
                                 label=row.label))
            continue
        path = train_row(row, base, budget, out / "runs" / row.label, seed, progress)
        stages["extend"][row.label] = json.loads((path / "lab_row.json").read_text())["cost"]
        specs.append(RunSpec(str(path), label=row.label))
    started, cpu = time.time(), time.process_time()
    lengths = [m * shape.native for m in budget.multiples]
    _say(progress, f"lab: evaluating {len(specs)} rows at {', '.join(map(str, lengths))} tokens")
    results = evaluate(specs, budget.tasks, lengths, out, seed=eval_seed, device=device, kind="lab", progress=progress)
    spent = out / "lab_evaluation_cost.json"  # evaluation resumes from its cache: the cost adds up over the calls
    before = json.loads(spent.read_text()) if spent.is_file() else {"seconds": 0.0, "cpu_seconds": 0.0}
    now = _cost(started, cpu)
    stages["evaluate"] = {k: round(before[k] + now[k], 1) for k in now}
    spent.write_text(json.dumps(stages["evaluate"]))
    total = {k: round(stages["pretrain"][k] + sum(v[k] for v in stages["extend"].values()) + stages["evaluate"][k], 1) for k in now}
    configured = {r.label: {"params": _as_json(configured_params(r, budget.factor)), "range": configured_range(r, budget.factor, shape.native)}
                  for r in rows}
    results["lab"] = {"budget": asdict(budget), "shape": asdict(shape), "pretrain_seed": seed, "pretrained": str(base),
                      "items": budget.items, "eval_seed": eval_seed,
                      "pretrain_summary": json.loads((base / "lab_pretrain.json").read_text()),
                      "rows": [asdict(r) for r in rows], "arms": {r.label: r.arm for r in rows}, "configured": configured,
                      "stages": stages, **total}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    render(out)
    return results


def combine(per_seed: list[dict]) -> dict:
    """Results of several pre-training seeds → one results dict (same schema) whose scores are the seed means, with
    ``seeds`` (the per-seed scores), ``min``/``max`` and the pooled ``n`` in every cell; ``lab.items`` is the item set
    and ``lab.seeds[i].eval_seed`` each seed's evaluation seed. Per-item outcomes stay in the per-seed results (the
    claims pair them, :func:`ropekit.studies.lab.claims.claim_checks`)."""
    first = per_seed[0]
    runs = []
    for index, run in enumerate(first["runs"]):
        merged = {k: v for k, v in run.items() if k != "results"}
        merged["results"] = {}
        for task, by_length in run["results"].items():
            merged["results"][task] = {}
            for length in by_length:
                cells = [r["runs"][index]["results"][task][length] for r in per_seed]
                scores = [c["score"] for c in cells]
                cell = {"score": sum(scores) / len(scores), "seeds": scores, "min": min(scores), "max": max(scores),
                        "n": sum(c["n"] for c in cells)}
                if "positions" in cells[0]:
                    cell["positions"] = {p: sum(c["positions"][p] for c in cells) / len(cells) for p in cells[0]["positions"]}
                if cells[0].get("far") is not None:
                    counted = [c for c in cells if c.get("far") is not None]
                    cell["far_n"] = sum(c["far_n"] for c in counted)
                    cell["far"] = sum(c["far"] * c["far_n"] for c in counted) / max(cell["far_n"], 1)
                    cell["far_seeds"] = [c["far"] for c in counted]
                if "middle_third" in cells[0]:
                    cell["middle_third"] = sum(c["middle_third"] for c in cells) / len(cells)
                    cell["middle_seeds"] = [c["middle_third"] for c in cells]
                    cell["middle_n"] = sum(c["middle_n"] for c in cells)
                merged["results"][task][length] = cell
        runs.append(merged)
    combined = {k: v for k, v in first.items() if k not in ("runs", "lab", "path")}
    combined.update({"runs": runs, "kind": f"lab (mean of {len(per_seed)} pre-training seeds)" if len(per_seed) > 1 else "lab",
                     "seconds": round(sum(r["lab"]["seconds"] for r in per_seed), 1)})
    combined["lab"] = {**{k: v for k, v in first["lab"].items() if k not in ("pretrain_seed", "eval_seed", "pretrained", "pretrain_summary", "stages", "seconds", "cpu_seconds")},
                       "seeds": [{"seed": r["lab"]["pretrain_seed"], "eval_seed": r["lab"].get("eval_seed", DEV_SEED),
                                  "pretrained": r["lab"]["pretrained"], "stages": r["lab"]["stages"],
                                  "seconds": r["lab"]["seconds"], "cpu_seconds": r["lab"]["cpu_seconds"],
                                  "pretrain": {k: r["lab"]["pretrain_summary"].get(k) for k in ("steps", "seconds", "cpu_seconds", "parameters", "learning_curve", "threads")}}
                                 for r in per_seed]}
    return combined
