"""The papers' claims checked against the lab's numbers: :data:`CLAIMS` (the explicit list, each with its paper),
:func:`claim_checks` (every claim, every trained row against the fine-tuned control, and the lab's own
requirements, each with its evidence and a verdict) and :func:`compare` (the old unpaired check, kept for callers).

**Every verdict is paired** (:func:`ropekit.studies.lab.verdicts.paired_verdict`): two rows are compared on the
same evaluation items — per item for pass key, key–value and binding (``samples[i]["correct"]``; binding, the main
task, only where the lab evaluated ``lab-bind``), per window for perplexity
(each window's mean NLL over its last ``tail`` tokens; the windows both rows hold, should a resumed evaluation have
placed some elsewhere) — one pair of sequences per pre-training seed, at the target
(``factor`` × native) only; beyond-target lengths go to the robustness table of ``lab.md``, never into a verdict.

* ``better`` (A > B): **confirmed** when every seed's paired difference favours A and the pooled 95% bootstrap
  interval lies above 0; **refuted** when every seed favours B and the interval lies below 0; **tie** otherwise.
* ``at_least`` (A ≥ B, or A ≈ B: non-inferiority): **confirmed** when the pooled interval's lower bound is above
  −margin (:data:`MARGINS`: 5 points of accuracy, 2% perplexity as ln 1.02 nats); **refuted** when its upper bound
  is below −margin; **tie** otherwise.
* **not decidable here**: a claim that A *improves* on B (``gain``) cannot show when B already scores ≥
  :data:`CEILING` on an accuracy; such a row says so instead of a tie (or a non-inferiority confirmed by
  construction), unless the numbers refute it. Claims the lab's model cannot express (EABF's layer rule on 2
  layers) say why.

Seeds scored on the same items (the dev items, or perplexity windows, which take no seed) are resampled jointly
(``shared_items``), so identical items are not counted as independent. Reads only per-seed results dicts (as
:func:`ropekit.studies.lab.rows.run_seed` returns them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import RopekitError
from .tasks import middle_third
from .verdicts import paired_verdict

LEVEL = 0.95
RESAMPLES = 2000
CEILING = 0.95  # B at or above this accuracy leaves no room for A's gain to show
BIND_CEILING = 98.0  # issue 30: no row a claim compares may reach this binding accuracy (%) at the target
MARGINS = {"accuracy": 0.05, "nll": math.log(1.02)}  # non-inferiority: 5 points; 2% perplexity


@dataclass(frozen=True)
class Metric:
    """What a verdict pairs: ``task`` outcomes per item (``unit`` accuracy: 1/0) or per window (``nll``)."""

    name: str
    task: str
    subset: str | None = None  # "middle_third": the key–value items whose gold pair sits at depth 1/3–2/3
    unit: str = "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "accuracy"


PASSKEY = Metric("pass key", "lab-passkey")
KV = Metric("key–value", "lab-kv")
KV_MIDDLE = Metric("key–value, middle third", "lab-kv", "middle_third")
BIND = Metric("binding", "lab-bind")
BIND_MIDDLE = Metric("binding, middle third", "lab-bind", "middle_third")
PPL = Metric("perplexity", "ppl", unit="nll")
# every metric: pass key (the sanity task), key–value retrieval, binding (the main task, off the ceiling at the target)
# and perplexity; a metric whose task a lab did not evaluate is left out of its claims (labs without lab-bind)
METRICS = (PASSKEY, KV, BIND, PPL)


@dataclass(frozen=True)
class Claim:
    """One claim: ``pairs`` of rows (A, B), each compared on every metric at the target. ``relation``: ``better`` or
    ``at_least``; ``gain``: the paper says A improves on B (a ceiling on B hides it), not that A matches B."""

    key: str
    text: str
    source: str
    pairs: tuple[tuple[str, str], ...]
    relation: str
    metrics: tuple[Metric, ...] = METRICS
    gain: bool = True
    group: str = "paper"


EABF_PAPER = "Zhang et al. 2024 (Entropy-ABF), arXiv 2401.07004"
CLAIMS = (
    Claim("eabf>abf", "fine-tuned EABF > ABF at the target", f"{EABF_PAPER}, Tables 2 and 5", (("ft-eabf", "ft-abf"),), "better"),
    Claim("abf>pi/yarn", "fine-tuned ABF > PI and > YaRN at the target", f"{EABF_PAPER}, Table 2",
          (("ft-abf", "ft-pi"), ("ft-abf", "ft-yarn")), "better"),
    Claim("cream>=pose", "CREAM ≥ PoSE in the middle third at the target, same budget",
          "Wu et al. 2024 (CREAM), arXiv 2406.07138, lost-in-the-middle results", (("cream-pi", "pose-pi"), ("cream-yarn", "pose-yarn")),
          "at_least", (KV_MIDDLE, BIND_MIDDLE, *METRICS)),
    Claim("native~target", "trained at the native window with positions over the target, a model reaches the target like one "
          "fine-tuned at the target length", "Zhu et al. 2024 (PoSE), arXiv 2309.10400; Wu et al. 2024 (CREAM)",
          (("pose-pi", "ft-pi"), ("cream-pi", "ft-pi"), ("pose-yarn", "ft-yarn"), ("cream-yarn", "ft-yarn")), "at_least", gain=False),
    Claim("longrecipe>=pose", "LongRecipe's sentence-gapped positions ≥ PoSE's at the same tokens",
          "Hu et al. 2024 (LongRecipe), arXiv 2409.00509", (("longrecipe-pi", "pose-pi"),), "at_least"),
    Claim("s2~full", "S²-Attn training ≈ full attention at the same budget (evaluated with full attention)",
          "Chen et al. 2024 (LongLoRA), arXiv 2309.12307", (("longlora-pi", "ft-pi"),), "at_least", gain=False),
    Claim("self-extend>none", "Self-Extend recovers the target without training (against the unextended model)",
          "Jin et al. 2024 (Self-Extend), arXiv 2401.01325", (("self-extend", "none"),), "better"),
    Claim("self-extend~ft", "training-free Self-Extend ≈ fine-tuned PI at the target",
          "Jin et al. 2024 (Self-Extend), arXiv 2401.01325: comparable to fine-tuning-based extension", (("self-extend", "ft-pi"),),
          "at_least", gain=False),
    Claim("yarn>pi", "training-free YaRN > PI at the target", "Peng et al. 2023 (YaRN), arXiv 2309.00071", (("yarn", "pi"),), "better"),
)
# EABF's layer rule needs a model with more than 2 layers (the default budget's, :data:`~ropekit.studies.lab.model.DEEP`)
LAYER_CLAIMS = (
    Claim("eabf-layers", "EABF's layer rule (layers 0–1 unscaled, the paper) ≥ scaling every layer (the reference code)",
          f"{EABF_PAPER}, §3 and Figure 1; the reference code scales all layers", (("ft-eabf", "ft-eabf-all"),), "at_least", gain=False),
    Claim("eabf-entropy~paper", "ropekit's probe-chosen layers (layers='entropy') ≈ the paper's rule",
          "ropekit: the entropy probe reproduces the paper's observation (docs/methods.md)", (("ft-eabf-entropy", "ft-eabf"),),
          "at_least", gain=False, group="ropekit"),
)
CONTROL = "ft-control"
CONTROL_SOURCE = "lab: a trained method that does not beat the fine-tuned control (RoPE unchanged, same budget) has shown nothing"
LAYER_RULE = ("EABF's layer rule: layers 0–1 keep t = 1, the logit scale acts in layers ≥ 2", f"{EABF_PAPER}, §3 and Figure 1")


def control_claims(arms: dict) -> list[Claim]:
    """Every trained row (fine-tuned at the target or trained at the native window) against ``ft-control``."""
    return [Claim(f"{label}>control", f"{label} > the fine-tuned control at the target", CONTROL_SOURCE, ((label, CONTROL),), "better",
                  group="control") for label, arm in arms.items() if arm in ("target", "native") and label != CONTROL]


# ----------------------------------------------------------------------------------------------------------------------
# Paired outcomes


def _run(result: dict, label: str) -> dict | None:
    return next((r for r in result["runs"] if r["label"] == label), None)


def outcomes(result: dict, label: str, metric: Metric, length: int) -> tuple[list[float], list] | None:
    """One seed's per-item outcomes of a row (1/0, or per-window NLL) and the items' identities, or None if absent."""
    run = _run(result, label)
    cell = (run or {}).get("results", {}).get(metric.task, {}).get(str(length))
    if cell is None:
        return None
    if metric.unit == "nll":
        windows = cell.get("windows")
        return ([float(w["nll"]) for w in windows], [w["offset"] for w in windows]) if windows else None
    samples = cell.get("samples")
    if samples is None:
        return None
    if metric.subset == "middle_third":
        samples = [s for s in samples if middle_third(s["depth"])]
    return [float(bool(s["correct"])) for s in samples], [tuple(s.get(k) for k in ("value", "offset", "distance", "depth")) for s in samples]


def _points(x: float, unit: str, sign: bool = True) -> str:
    return f"{100 * x:{'+' if sign else ''}.1f}" if unit == "accuracy" else f"{x:{'+' if sign else ''}.3f}"


def rule_text(relation: str, unit: str, gain: bool, level: float = LEVEL) -> str:
    """The rule a claim row was decided by, in one sentence."""
    what = "points" if unit == "accuracy" else "nats of NLL"
    if relation == "better":
        text = (f"A > B: confirmed when every seed's paired difference favours A and the pooled {level:.0%} interval lies above 0, "
                "refuted when every seed favours B and it lies below 0, tie otherwise")
    else:
        m = _points(MARGINS[unit], unit, sign=False)
        text = (f"A ≥ B − {m} {what}: confirmed when the pooled {level:.0%} interval's lower bound is above −{m}, refuted when "
                f"its upper bound is below −{m}, tie otherwise")
    if gain and unit == "accuracy":
        text += f"; not decidable here when B scores ≥ {CEILING:.0%} (no room for a gain)"
    return text


def paired_row(per_seed: list[dict], claim: Claim, a: str, b: str, metric: Metric, multiple: int) -> dict:
    """One claim row: A vs B on one metric at one length, decided by the paired rule (see the module docstring)."""
    native = per_seed[0]["lab"]["shape"]["native"]
    length = multiple * native
    row = {"group": claim.group, "key": claim.key, "claim": claim.text, "source": claim.source, "a": a, "b": b, "metric": metric.name,
           "task": metric.task, "subset": metric.subset, "unit": metric.unit, "multiple": multiple, "length": length,
           "relation": claim.relation, "margin": MARGINS[metric.unit] if claim.relation == "at_least" else 0.0, "gain": claim.gain,
           "rule": rule_text(claim.relation, metric.unit, claim.gain)}
    xs, ys, ids = [], [], []
    for result in per_seed:
        x, y = outcomes(result, a, metric, length), outcomes(result, b, metric, length)
        if x is None or y is None:
            return {**row, "verdict": "not run", "reason": f"{metric.task} at {length} tokens missing for {a if x is None else b}",
                    "evidence": "not run"}
        if metric.unit == "nll" and x[1] != y[1]:  # windows of a resumed evaluation may sit elsewhere: pair the common ones
            by_x, by_y = dict(zip(x[1], x[0])), dict(zip(y[1], y[0]))
            common = [o for o in x[1] if o in by_y]
            x, y = ([by_x[o] for o in common], common), ([by_y[o] for o in common], common)
        if not x[0] or not y[0]:
            return {**row, "verdict": "not run", "reason": f"no {metric.name} items at {length} tokens", "evidence": "not run"}
        if x[1] != y[1]:
            raise RopekitError(f"claim {claim.key}: {a} and {b} were not scored on the same {metric.name} items at {length} tokens "
                               f"(pre-training seed {result['lab'].get('pretrain_seed')})", "re-run the lab's evaluation into one directory")
        xs.append(x[0])
        ys.append(y[0])
        ids.append(x[1])
    shared = len(ids) > 1 and all(i == ids[0] for i in ids)  # dev items, or perplexity windows: the same items in every seed
    v = paired_verdict(xs, ys, metric.higher_is_better, claim.relation, row["margin"], RESAMPLES, LEVEL, shared_items=shared)
    for entry, result in zip(v["seeds"], per_seed):
        entry["seed"] = result["lab"].get("pretrain_seed", entry["seed"])
        entry["eval_seed"] = result["lab"].get("eval_seed")
    verdict, reason = v["verdict"], v["reason"]
    if (claim.gain and metric.unit == "accuracy" and v["pooled"]["mean_b"] >= CEILING and verdict != "refuted"
            and not (claim.relation == "better" and verdict == "confirmed")):
        verdict = "not decidable here"
        reason = (f"ceiling: {b} scores {100 * v['pooled']['mean_b']:.0f}% ≥ {CEILING:.0%}, so a gain of {a} cannot show "
                  f"(by the rule alone: {v['verdict']})")
    p = v["pooled"]
    means = (f"{100 * p['mean_a']:.1f} vs {100 * p['mean_b']:.1f}" if metric.unit == "accuracy" else
             f"ppl {math.exp(p['mean_a']):.2f} vs {math.exp(p['mean_b']):.2f}")
    evidence = f"{means}; Δ {_points(p['diff'], metric.unit)} [{_points(p['low'], metric.unit)}, {_points(p['high'], metric.unit)}]"
    keep = ("level", "method", "shared_items", "resamples", "rng_seed", "seeds", "pooled", "favour_a", "favour_b", "even")
    return {**row, **{k: v[k] for k in keep}, "verdict": verdict, "reason": reason, "evidence": evidence}


# ----------------------------------------------------------------------------------------------------------------------
# The checks


def _values(per_seed: list[dict], label: str, task: str, multiple: int, key: str = "score") -> list[float] | None:
    """A cell's value in every seed (None when any seed lacks it)."""
    values = []
    for result in per_seed:
        cell = ((_run(result, label) or {}).get("results", {}).get(task, {}).get(str(multiple * result["lab"]["shape"]["native"])))
        if cell is None or cell.get(key) is None:
            return None
        values.append(cell[key])
    return values


def _threshold(per_seed, label, task, multiple, threshold, key="score", below=False) -> tuple[str, str]:
    values = _values(per_seed, label, task, multiple, key)
    name = f"{label} {task}{' ' + key.replace('_', ' ') if key != 'score' else ''} @{multiple}×"
    if values is None:
        return "not run", f"{name}: not run"
    mean = sum(values) / len(values)
    ok = mean <= threshold if below else mean >= threshold
    spread = f" (seeds {min(values):.0f}–{max(values):.0f})" if len(values) > 1 else ""
    return ("confirmed" if ok else "refuted"), f"{name} = {mean:.1f}{spread}"


def _requirement(claim: str, parts: list[tuple[str, str]]) -> dict:
    verdicts = [p[0] for p in parts]
    outcome = ("not run" if not verdicts or "not run" in verdicts else "confirmed" if all(v == "confirmed" for v in verdicts)
               else "refuted" if all(v == "refuted" for v in verdicts) else "partly")
    return {"group": "lab", "claim": claim, "source": "the lab's design (docs/lab.md)", "verdict": outcome,
            "rule": "threshold on the mean over seeds", "evidence": "; ".join(p[1] for p in parts)}


def requirements(per_seed: list[dict]) -> list[dict]:
    """The lab's own requirements (not papers' claims): the model retrieves in its window, fails at the target
    unextended, and the best fine-tuned method retrieves at the target; thresholds on the mean over seeds."""
    info = per_seed[0]["lab"]
    labels = {r["label"] for r in per_seed[0]["runs"]}
    factor = info["budget"].get("factor", 4)
    multiples = info["budget"]["multiples"]
    bind = BIND.task in evaluated(per_seed)
    retrieval = ("lab-passkey", "lab-kv", *((BIND.task,) if bind else ()))
    checks = []
    if "none" in labels:
        checks.append(_requirement("the pre-trained model retrieves in its window (pass key ≥ 95%, key–value ≥ 90%"
                                   + (", binding ≥ 90%)" if bind else ")"),
                                   [_threshold(per_seed, "none", "lab-passkey", 1, 95), _threshold(per_seed, "none", "lab-kv", 1, 90),
                                    *([_threshold(per_seed, "none", BIND.task, 1, 90)] if bind else [])]))
        if factor in multiples:
            checks.append(_requirement(f"unextended, it fails at {factor}× (≤ 10% on all items)",
                                       [_threshold(per_seed, "none", t, factor, 10, below=True) for t in retrieval]))
            checks.append(_requirement(f"unextended, it fails at {factor}× on the items beyond its window (needle ≥ the native window "
                                       "before the answer: ≤ 10%)",
                                       [_threshold(per_seed, "none", t, factor, 10, key="far", below=True) for t in retrieval]))
    tuned = [label for label, arm in info["arms"].items() if arm == "target" and label != CONTROL and label in labels]
    if tuned and factor in multiples:
        def worst(label):
            values = [_values(per_seed, label, t, factor) for t in ("lab-passkey", "lab-kv")]
            return min(sum(v) / len(v) for v in values) if all(values) else -1.0

        best = max(tuned, key=worst)
        checks.append(_requirement(f"the best fine-tuned method retrieves ≥ 90% at the target ({factor}×)",
                                   [_threshold(per_seed, best, t, factor, 90) for t in ("lab-passkey", "lab-kv")]))
        checks[-1]["evidence"] = f"best: {best}; " + checks[-1]["evidence"]
    compared = sorted({label for claim in CLAIMS for pair in claim.pairs for label in pair if set(pair) <= labels}
                      | {label for label, arm in info["arms"].items() if arm != "free" and label in labels})
    if bind and compared and factor in multiples:
        # the main task exists to leave room for a gain: a compared row at its ceiling makes its claims ties again
        checks.append(_requirement(f"the main task is off the ceiling at the target: every compared row < {BIND_CEILING:.0f}% "
                                   f"binding at {factor}×",
                                   [_below(per_seed, label, BIND.task, factor, BIND_CEILING) for label in compared]))
    return checks


def _below(per_seed, label, task, multiple, ceiling) -> tuple[str, str]:
    """Confirmed when the seed mean is strictly below ``ceiling``."""
    verdict, text = _threshold(per_seed, label, task, multiple, ceiling)
    return {"confirmed": "refuted", "refuted": "confirmed"}.get(verdict, verdict), text


def evaluated(per_seed: list[dict]) -> set[str]:
    """The tasks a lab evaluated: its results' ``tasks`` (or, without them, every task some run holds)."""
    first = per_seed[0]
    if "tasks" in first:
        return set(first["tasks"])
    return {task for run in first["runs"] for task in run.get("results", {})}


def claim_checks(per_seed: list[dict] | dict) -> list[dict]:
    """Every claim of :data:`CLAIMS` (and EABF's layer rule), every trained row against ``ft-control`` on every
    metric, and the lab's own requirements, from the per-seed results (one results dict per pre-training seed,
    per-item samples kept; a single dict is one seed). Paired claim rows are decided at the target only."""
    per_seed = [per_seed] if isinstance(per_seed, dict) else list(per_seed)
    if not per_seed:
        raise RopekitError("no per-seed results to check the claims on", "pass the results of at least one pre-training seed")
    info = per_seed[0]["lab"]
    labels = {r["label"] for r in per_seed[0]["runs"]}
    factor = info["budget"].get("factor", 4)
    checks = requirements(per_seed)
    layers = info["shape"].get("layers", 2)
    layer_claims = LAYER_CLAIMS if layers > 2 else ()
    if {"ft-eabf", "eabf"} & labels and layers <= 2:
        reason = (f"the lab model has {layers} layers: with layers 0–1 unscaled EABF scales nothing and equals ABF "
                  "(the default budget's model has 4 layers)")
        checks.append({"group": "paper", "key": "eabf-layers", "claim": LAYER_RULE[0], "source": LAYER_RULE[1],
                       "verdict": "not decidable here", "reason": reason, "evidence": reason})
    elif layers > 2 and "ft-eabf" in labels and "ft-eabf-all" not in labels:
        reason = "needs the ft-eabf-all row (every layer scaled) beside ft-eabf"
        checks.append({"group": "paper", "key": "eabf-layers", "claim": LAYER_RULE[0], "source": LAYER_RULE[1],
                       "verdict": "not run", "reason": reason, "evidence": reason})
    if factor not in info["budget"]["multiples"]:
        return checks
    tasks = evaluated(per_seed)
    for claim in (*CLAIMS, *layer_claims, *control_claims(info["arms"])):
        for a, b in claim.pairs:
            if {a, b} <= labels:
                checks += [paired_row(per_seed, claim, a, b, metric, factor) for metric in claim.metrics if metric.task in tasks]
    return checks


# ----------------------------------------------------------------------------------------------------------------------
# The old unpaired check (no claim uses it; kept for callers of the public name)

PPL_TOLERANCE = 0.01


def _cell(results: dict, label: str, task: str, multiple: int, key: str = "score"):
    run = _run(results, label)
    cell = (run or {}).get("results", {}).get(task, {}).get(str(multiple * results["lab"]["shape"]["native"]))
    if cell is None or cell.get(key) is None:
        return None
    prefix = {"middle_third": "middle", "far": "far"}.get(key)
    return {"mean": cell[key], "seeds": cell.get(f"{prefix}_seeds" if prefix else "seeds", [cell[key]]),
            "n": cell.get(f"{prefix}_n" if prefix else "n", 0)}


def compare(results: dict, a: str, b: str, task: str, multiple: int, key: str = "score", strict: bool = True) -> dict:
    """Unpaired (superseded by the paired claim rows): is row ``a`` better than row ``b`` (``strict``) or at least as
    good, on one cell of combined results? Accuracies: the pooled difference against two binomial standard errors and
    most seeds agreeing; perplexity: every seed differing by more than :data:`PPL_TOLERANCE`."""
    x, y = _cell(results, a, task, multiple, key), _cell(results, b, task, multiple, key)
    if x is None or y is None:
        return {"verdict": "not run", "text": f"{a} vs {b}: not run"}
    higher = task != "ppl"
    diff = (x["mean"] - y["mean"]) * (1 if higher else -1)
    seeds = len(x["seeds"])
    if higher:
        agree = sum(p > q for p, q in zip(x["seeds"], y["seeds"]))
        worse = sum(p < q for p, q in zip(x["seeds"], y["seeds"]))
        pa, pb = x["mean"] / 100, y["mean"] / 100
        se = 100 * math.sqrt(pa * (1 - pa) / max(x["n"], 1) + pb * (1 - pb) / max(y["n"], 1))
        better, behind = diff > 2 * se and agree > seeds / 2, diff < -2 * se and worse > seeds / 2
        detail = f"{x['mean']:.1f} vs {y['mean']:.1f} (Δ {diff:+.1f} ± {2 * se:.1f}, {agree}/{seeds} seeds ahead)"
    else:
        agree = sum(p < q * (1 - PPL_TOLERANCE) for p, q in zip(x["seeds"], y["seeds"]))
        worse = sum(p > q * (1 + PPL_TOLERANCE) for p, q in zip(x["seeds"], y["seeds"]))
        better, behind = agree == seeds, worse == seeds
        detail = f"{x['mean']:.2f} vs {y['mean']:.2f} ({agree}/{seeds} seeds lower by > {PPL_TOLERANCE:.0%})"
    verdict = "confirmed" if better else "refuted" if behind else "not resolved" if strict else "tie"
    return {"verdict": verdict, "text": detail, "diff": diff}
