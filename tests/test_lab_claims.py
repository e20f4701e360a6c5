"""The lab's claims on synthetic per-seed results (no model trained): dev and test item namespaces, the paired claim
rows (confirmed, refuted, tie, seeds that disagree, not decidable at the ceiling), claims at the target only, ABF's
base rule, and lab.md's robustness table and intervals."""

import json
import random
from dataclasses import replace

import pytest

import ropekit
from ropekit.eval.tasks import evenly_spaced
from ropekit.studies import lab
from ropekit.testing import tiny_model

ARMS = {"none": "free", "yarn": "free", "pi": "free", "ft-control": "target", "ft-pi": "target", "ft-yarn": "target",
        "ft-abf": "target", "ft-eabf": "target", "pose-pi": "native", "cream-pi": "native"}
N = {"lab-passkey": 100, "lab-kv": 108}


def exact(correct: int, n: int, salt: str) -> list[bool]:
    flags = [i < correct for i in range(n)]
    random.Random(salt).shuffle(flags)
    return flags


def cell(task: str, eval_seed: int, spec, label: str, seed: int) -> dict:
    """A cell holding per-item samples (retrieval) or per-window NLLs (perplexity). ``spec``: correct items (or the
    NLL shift) per seed; a tuple ``(value, salt)`` fixes the shuffle so two rows can hold identical outcomes."""
    value, salt = spec[seed] if isinstance(spec[seed], tuple) else (spec[seed], f"{label}-{task}-{seed}")
    if task == "ppl":
        rng = random.Random(salt)
        windows = [{"offset": 100 * w, "nll": 2 + 0.05 * w + value + rng.gauss(0, 0.01)} for w in range(32)]
        return {"score": 7.0, "n": 32, "windows": windows}
    depths = evenly_spaced(9)
    flags = exact(value, N[task], salt)
    samples = [{"correct": f, "value": f"{eval_seed}-{i}", "offset": i, "distance": i, "depth": depths[i % 9] if task == "lab-kv" else 0.5}
               for i, f in enumerate(flags)]
    out = {"score": 100.0 * sum(flags) / len(flags), "n": len(flags), "samples": samples}
    if task == "lab-kv":
        middle = [s["correct"] for s in samples if lab.middle_third(s["depth"])]
        out.update(middle_third=100.0 * sum(middle) / len(middle), middle_n=len(middle))
    return out


def per_seed(specs: dict, items: str = "test", seeds=(0, 1, 2), beyond: dict | None = None) -> list[dict]:
    """Per-seed results: every row of ARMS at 1×, 4× and 8× of a native 128; ``specs[label][task]`` per seed (70%
    correct, NLL shift 0 by default); ``beyond`` replaces the 8× cells (to show that no verdict reads them)."""
    out = []
    for seed in seeds:
        eval_seed = lab.evaluation_seed(items, seed)
        runs = []
        for label in ARMS:
            results = {}
            for task in ("lab-passkey", "lab-kv", "ppl"):
                default = [0.0] * 3 if task == "ppl" else [int(0.7 * N[task])] * 3
                chosen = specs.get(label, {}).get(task, default)
                far = (beyond or {}).get(label, {}).get(task, chosen)
                results[task] = {str(m * 128): cell(task, eval_seed, far if m == 8 else chosen, label, seed) for m in (1, 4, 8)}
            runs.append({"label": label, "results": results})
        rows = {r.label: r for r in lab.ROWS}
        out.append({"format": 2, "kind": "lab", "seed": eval_seed, "lengths": [128, 512, 1024], "environment": {
                        "device": "CPU", "torch": "2", "transformers": "5", "ropekit": "0", "command": "ropekit lab"},
                    "tasks": {"lab-passkey": {}, "lab-kv": {}, "ppl": {}}, "runs": runs,
                    "lab": {"budget": {"name": "default", "factor": 4, "multiples": [1, 4, 8]}, "shape": {"native": 128, "layers": 2},
                            "pretrain_seed": seed, "eval_seed": eval_seed, "items": items, "pretrained": "", "stages": {
                                "pretrain": {"seconds": 1, "cpu_seconds": 1}, "extend": {}, "evaluate": {"seconds": 1, "cpu_seconds": 1}},
                            "pretrain_summary": {"parameters": 1000, "learning_curve": []}, "seconds": 2.0, "cpu_seconds": 2.0,
                            "arms": dict(ARMS), "configured": {label: {"range": lab.configured_range(rows[label], 4, 128)} for label in ARMS}}})
    return out


def find(checks, key, a, b, metric):
    return next(c for c in checks if c.get("key") == key and c["a"] == a and c["b"] == b and c["metric"] == metric)


def test_dev_and_test_items_never_meet():
    assert [lab.evaluation_seed("dev", k) for k in (0, 1, 2)] == [0, 0, 0]  # the items design runs used
    test = [lab.evaluation_seed("test", k) for k in (0, 1, 2)]
    assert len(set(test)) == 3 and not set(test) & {0, 1, 1000}  # one set per seed; not dev, not the learning curve's
    assert lab.BUDGETS["quick"].items == "dev" and lab.BUDGETS["default"].items == "test"
    with pytest.raises(ropekit.RopekitError, match="unknown item set 'holdout'"):
        lab.evaluation_seed("holdout", 0)
    with pytest.raises(ropekit.RopekitError, match="seed ≥ 0"):
        lab.evaluation_seed("test", -1)


def test_resuming_a_directory_on_other_items_is_refused(tmp_path):
    out = tmp_path / "lab"
    out.mkdir()
    (out / "lab.json").write_text(json.dumps({"budget": "default", "seeds": [0], "rows": []}))  # before item sets: dev items
    with pytest.raises(ropekit.RopekitError, match="holds a lab scored on dev items, not test ones"):
        lab.lab(out, progress=False)
    (out / "lab.json").write_text(json.dumps({"budget": "quick", "items": "dev", "seeds": [0], "rows": []}))
    with pytest.raises(ropekit.RopekitError, match="scored on dev items, not test ones"):
        lab.lab(out, quick=True, items="test", progress=False)
    with pytest.raises(ropekit.RopekitError, match="unknown item set"):
        lab.lab(tmp_path / "other", items="holdout", progress=False)
    assert not (tmp_path / "other").exists()


def test_run_seed_scores_the_budgets_items_and_records_them(tmp_path, monkeypatch):
    import ropekit.eval.runner
    import ropekit.studies.report

    base = tmp_path / "base"
    base.mkdir()
    (base / "lab_pretrain.json").write_text(json.dumps({"cost": {"seconds": 1.0, "cpu_seconds": 1.0}}))
    asked = []

    def fake_evaluate(specs, tasks, lengths, out, seed=0, **kwargs):
        asked.append((seed, [(s.label, s.method, s.params) for s in specs]))
        return {"runs": []}

    monkeypatch.setattr(lab.rows, "pretrain", lambda *args, **kwargs: base)
    monkeypatch.setattr(ropekit.eval.runner, "evaluate", fake_evaluate)
    monkeypatch.setattr(ropekit.studies.report, "render", lambda out: None)
    rows = lab.get_rows(["none", "eabf"])
    for items, seed, expected in (("test", 2, lab.evaluation_seed("test", 2)), ("dev", 2, 0)):
        budget = replace(lab.BUDGETS["default"], items=items)
        results = lab.run_seed(budget, rows, seed, tmp_path / f"{items}-{seed}", progress=False)
        assert asked[-1][0] == expected and (results["lab"]["items"], results["lab"]["eval_seed"]) == (items, expected)
    assert asked[-1][1][1] == ("eabf", "eabf", {"theta_factor": 50.0})  # ABF's base by the rule at 4×; the paper's layers
    assert results["lab"]["configured"]["eabf"]["range"].startswith("up to 4× (512 tokens), θ ×50")


def test_abf_base_rule_and_configured_rows():
    assert lab.abf_theta_factor(4) == 50.0  # Entropy-ABF's own ×50 at its own factor
    assert lab.abf_theta_factor(1) == 1.0
    assert lab.abf_theta_factor(2) == pytest.approx(50 ** 0.5) and lab.abf_theta_factor(8) == pytest.approx(50 ** 1.5)
    rows = {r.label: r for r in lab.ROWS}
    assert lab.configured_params(rows["ft-abf"], 8) == {"theta_factor": pytest.approx(353.553, rel=1e-5)}
    assert lab.configured_params(rows["ft-pi"], 4) == {}  # PI / YaRN take the factor from the target length
    assert lab.configured_params(lab.Row("x", "abf", "target", params={"theta": 1e4}), 4) == {"theta": 1e4}  # a given base stays
    assert "not extended" in lab.configured_range(rows["none"], 4, 128)
    assert "no fixed range" in lab.configured_range(rows["dynamic"], 4, 128)
    assert lab.configured_range(rows["ft-yarn"], 4, 128) == "up to 4× (512 tokens), fine-tuned there"
    model = tiny_model()
    ropekit.extend(model, "abf", target_length=4 * model.config.max_position_embeddings, **lab.configured_params(rows["ft-abf"], 4))
    assert model.config.ropekit["params"]["abf"]["rope_theta"] == pytest.approx(50 * 10000.0)  # the tiny model's θ, ×50


SPECS = {
    "ft-abf": {"lab-passkey": [100, 100, 100], "lab-kv": [70, 70, 70], "ppl": [-0.1, -0.1, 0.1]},
    "ft-eabf": {"lab-passkey": [100, 100, 100], "lab-kv": [71, 70, 72]},
    "ft-pi": {"lab-passkey": [60, 60, 60], "lab-kv": [(108, "same")] * 3},
    "ft-yarn": {"lab-kv": [105, 104, 106]},
    "pose-pi": {"lab-kv": [(108, "same")] * 3},
    "cream-pi": {"lab-kv": [108, 108, 108]},
    "ft-control": {"lab-passkey": [30, 30, 30]},
}


def test_claims_are_paired_at_the_target_with_every_outcome():
    # beyond the target the numbers say the opposite: no verdict may read them
    beyond = {"ft-abf": {"lab-passkey": [10, 10, 10]}, "ft-yarn": {"lab-kv": [10, 10, 10]}}
    checks = lab.claim_checks(per_seed(SPECS, beyond=beyond))
    json.dumps(checks)  # goes into results.json as it is
    paired = [c for c in checks if "pooled" in c]
    assert paired and {c["multiple"] for c in paired} == {4} and {c["length"] for c in paired} == {512}

    confirmed = find(checks, "abf>pi/yarn", "ft-abf", "ft-pi", "pass key")  # 100 vs 60 in every seed
    assert confirmed["verdict"] == "confirmed" and confirmed["pooled"]["diff"] == pytest.approx(0.4)
    assert [s["seed"] for s in confirmed["seeds"]] == [0, 1, 2] and [s["eval_seed"] for s in confirmed["seeds"]] == [2000, 2001, 2002]
    assert all(s["low"] > 0 for s in confirmed["seeds"]) and not confirmed["shared_items"]
    assert confirmed["rule"].startswith("A > B: confirmed when every seed") and "ceiling" not in confirmed["verdict"]

    refuted = find(checks, "abf>pi/yarn", "ft-abf", "ft-yarn", "key–value")  # 70 vs 97: B far ahead, at its ceiling
    assert refuted["verdict"] == "refuted" and refuted["pooled"]["high"] < 0

    disagree = find(checks, "abf>pi/yarn", "ft-abf", "ft-pi", "perplexity")  # NLL lower in two seeds, higher in one
    assert disagree["verdict"] == "tie" and disagree["reason"].startswith("seeds disagree (2 favour A, 1 favour B")
    assert disagree["unit"] == "nll" and disagree["shared_items"]  # windows take no seed: resampled jointly

    tie = find(checks, "eabf>abf", "ft-eabf", "ft-abf", "key–value")  # 71/70/72 of 108 against 70
    assert tie["verdict"] == "tie" and tie["pooled"]["low"] < 0 < tie["pooled"]["high"]

    ceiling = find(checks, "eabf>abf", "ft-eabf", "ft-abf", "pass key")  # both at 100%: a gain cannot show
    assert ceiling["verdict"] == "not decidable here" and ceiling["reason"].startswith("ceiling: ft-abf scores 100%")
    middle = find(checks, "cream>=pose", "cream-pi", "pose-pi", "key–value, middle third")
    assert middle["verdict"] == "not decidable here"  # "≥" at the ceiling would be confirmed by construction

    parity = find(checks, "native~target", "pose-pi", "ft-pi", "key–value")  # identical outcomes: not worse, at any accuracy
    assert parity["verdict"] == "confirmed" and parity["relation"] == "at_least" and parity["margin"] == 0.05

    layers = next(c for c in checks if c.get("key") == "eabf-layers")
    assert layers["verdict"] == "not decidable here" and "2 layers" in layers["reason"]

    controls = [c for c in checks if c["group"] == "control"]
    trained = [label for label, arm in ARMS.items() if arm != "free" and label != "ft-control"]
    assert {(c["a"], c["metric"]) for c in controls} == {(a, m) for a in trained for m in ("pass key", "key–value", "perplexity")}
    assert find(checks, "ft-pi>control", "ft-pi", "ft-control", "pass key")["verdict"] == "confirmed"  # 60 vs 30
    assert find(checks, "ft-pi>control", "ft-pi", "ft-control", "perplexity")["verdict"] == "tie"
    assert not any(c["verdict"] == "not run" for c in paired)


def test_dev_items_are_shared_across_seeds_and_resampled_jointly():
    checks = lab.claim_checks(per_seed(SPECS, items="dev"))
    row = find(checks, "abf>pi/yarn", "ft-abf", "ft-pi", "pass key")
    assert row["shared_items"] and {s["eval_seed"] for s in row["seeds"]} == {0}
    one = lab.claim_checks(per_seed(SPECS, seeds=(0,))[0])  # one seed's results dict is accepted as it is
    assert find(one, "abf>pi/yarn", "ft-abf", "ft-pi", "pass key")["verdict"] == "confirmed"


def test_items_that_differ_between_rows_are_refused():
    results = per_seed(SPECS, seeds=(0,))
    samples = results[0]["runs"][list(ARMS).index("ft-pi")]["results"]["lab-passkey"]["512"]["samples"]
    samples[3]["value"] = "other"
    with pytest.raises(ropekit.RopekitError, match="not scored on the same pass key items"):
        lab.claim_checks(results)


def test_perplexity_pairs_the_windows_two_rows_share():
    results = per_seed(SPECS, seeds=(0,))
    windows = results[0]["runs"][list(ARMS).index("ft-pi")]["results"]["ppl"]["512"]["windows"]
    windows[5]["offset"] = 12345  # a window the other rows do not hold (a resumed evaluation)
    row = find(lab.claim_checks(results), "abf>pi/yarn", "ft-abf", "ft-pi", "perplexity")
    assert row["pooled"]["n"] == 31 and row["verdict"] != "not run"


def test_lab_markdown_has_the_robustness_table_and_the_intervals():
    results = per_seed(SPECS)
    combined = lab.combine(results)
    md = lab.lab_markdown(combined, lab.claim_checks(results))
    assert "- items: **test**, evaluation seed 2000 (pre-training seed 0), 2001 (pre-training seed 1)" in md
    pass_key = md.split("## Pass key")[1].split("##")[0]
    assert "| row | arm | 1× (128) | 4× (512) |" in pass_key and "8×" not in pass_key  # main tables stop at the target
    robust = md.split("## Robustness beyond the target")[1].split("## Claims")[0]
    assert "| row | configured for | pass key 8× | key–value 8× | perplexity 8× |" in robust
    assert "| ft-yarn | up to 4× (512 tokens), fine-tuned there |" in robust
    claims = md.split("## Claims (at the target, 4× = 512 tokens)")[1]
    assert "paired bootstrap interval over items" in claims
    line = next(x for x in claims.splitlines() if "| ft-abf > ft-pi | pass key |" in x)
    assert "100.0 vs 60.0" in line and "| +40.0 [+" in line and "0: +40.0 [+" in line and "**confirmed**" in line
    assert "### Against the fine-tuned control" in claims and "### The lab's own requirements" in claims
    undecided = md.split("## What this scale cannot decide")[1]
    assert "EABF's layer rule" in undecided and "ceiling: ft-abf scores 100%" in undecided


def test_layer_rule_is_paired_on_a_deeper_model(monkeypatch):
    """On the 4-layer model the layer rule is an ordinary paired claim: the paper's rule (ft-eabf) against every layer
    scaled (ft-eabf-all), and the probe-chosen layers against the paper's."""
    import ropekit.studies.lab as lab_package

    monkeypatch.setitem(ARMS, "ft-eabf-all", "target")
    monkeypatch.setitem(ARMS, "ft-eabf-entropy", "target")
    same = {"lab-passkey": [(70, "eabf-pk-0"), (70, "eabf-pk-1"), (70, "eabf-pk-2")]}
    specs = {"ft-eabf": same, "ft-eabf-entropy": same, "ft-eabf-all": {"lab-passkey": [30, 35, 25]}}
    results = per_seed(specs)
    for result in results:
        result["lab"]["shape"]["layers"] = 4
    checks = lab_package.claim_checks(results)
    worse = find(checks, "eabf-layers", "ft-eabf", "ft-eabf-all", "pass key")  # 70 vs ~30: the paper's rule is not worse
    assert worse["verdict"] == "confirmed" and worse["relation"] == "at_least"
    probe = find(checks, "eabf-entropy~paper", "ft-eabf-entropy", "ft-eabf", "pass key")  # identical outcomes
    assert probe["verdict"] == "confirmed" and probe["group"] == "ropekit"
    assert not any(c.get("key") == "eabf-layers" and c["verdict"] == "not decidable here" for c in checks)
    flipped = [dict(r, runs=[dict(run, label={"ft-eabf": "ft-eabf-all", "ft-eabf-all": "ft-eabf"}.get(run["label"], run["label"]))
                             for run in r["runs"]]) for r in results]
    assert find(lab_package.claim_checks(flipped), "eabf-layers", "ft-eabf", "ft-eabf-all", "pass key")["verdict"] == "refuted"
    text = lab_package.lab_markdown(lab_package.combine(results), checks)
    assert "ropekit's own rule" in text and "ft-eabf-entropy" in text
