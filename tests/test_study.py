"""The study pipeline end to end on a tiny model: train runs, evaluation, report, goal summary, resume."""

import json
import shutil

import pytest

import ropekit
from ropekit.studies import study as study_module
from ropekit.studies.study import Preset, Run, Slice
from ropekit.testing import save_tiny_checkpoint, tiny_tokenizer


def tiny_preset(tmp_path, slices=()) -> Preset:
    save_tiny_checkpoint(tmp_path / "model", vocab_size=len(tiny_tokenizer()))
    text = tmp_path / "doc.txt"
    text.write_text(" ".join(f"token{i % 50} and word{i % 7}." for i in range(2000)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Remember {i}. " + "Filler. " * 30 + "Which?"},
                                                     {"role": "assistant", "content": f"{i}."}]}) + "\n" for i in range(6)))
    return Preset("tiny", "a tiny study", str(tmp_path / "model"), (
        Run("none", "none", "512", train=False),
        Run("eabf-512", "eabf", "512", recipe="smoke", options={"data": str(chat), "max_steps": 2}),
        Run("cream-linear-512", "linear", "512", recipe="cream-paper", strategy="cream",
            options={"data": str(text), "max_steps": 2, "warmup_steps": 0, "samples": 4}),
    ), (400, 500), {"passkey": {"trials": 1}, "ppl": {"windows": 1, "tail": 32, "source": str(text)}},
        {"learning_rate": 1e-3, "batch_size": 2, "save_steps": 100}, slices)


def test_study_runs_trains_evaluates_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setitem(study_module.PRESETS, "tiny", tiny_preset(tmp_path))
    results = study_module.study("tiny", tmp_path / "study", device="cpu", progress=False)
    assert [r["label"] for r in results["runs"]] == ["none", "eabf-512", "cream-linear-512"]
    assert results["runs"][2]["record"]["method"] == "linear"
    summary = json.loads((tmp_path / "study" / "all" / "runs" / "cream-linear-512" / "training_summary.json").read_text())
    assert summary["strategy"] == "cream" and summary["data"]["examples"] == 4 and summary["train_length"] == 64
    slice_results = json.loads((tmp_path / "study" / "all" / "results.json").read_text())
    assert slice_results["slice"] == "all" and slice_results["preset"] == "tiny"
    trained = slice_results["runs"][1]["training"]
    assert trained["steps"] == 2 and len(trained["log"]) == 2 and "training" not in slice_results["runs"][0]
    md = (tmp_path / "study" / "study.md").read_text()
    assert "## Goals" in md and "eabf-512" in md and (tmp_path / "study" / "report.html").exists()
    stamp = (tmp_path / "study" / "all" / "runs" / "eabf-512" / "model.safetensors").stat().st_mtime_ns
    study_module.study("tiny", tmp_path / "study", device="cpu", progress=False)  # resumes: nothing retrained
    assert (tmp_path / "study" / "all" / "runs" / "eabf-512" / "model.safetensors").stat().st_mtime_ns == stamp


def test_slices_run_apart_and_merge_into_one_report(tmp_path, monkeypatch):
    slices = (Slice("first", "the untrained row", ("none",), (400,), {"passkey": {"trials": 1}}),
              Slice("second", "a trained row", ("eabf-512",)))  # cream-linear-512 is in no slice: slice "other"
    preset = tiny_preset(tmp_path, slices)
    monkeypatch.setitem(study_module.PRESETS, "tiny", preset)
    assert [s.name for s in study_module.preset_slices(preset)] == ["first", "second", "other"]
    out = tmp_path / "study"
    merged = study_module.study("tiny", out, device="cpu", progress=False, slice_name="first")
    assert [r["label"] for r in merged["runs"]] == ["none"] and merged["lengths"] == [400]
    assert not (out / "second").exists()
    merged = study_module.study("tiny", out, device="cpu", progress=False, slice_name="second")
    assert {r["label"]: r["slice"] for r in merged["runs"]} == {"none": "first", "eabf-512": "second"}
    assert merged["lengths"] == [400, 500]  # the union; "none" was not measured at 500 and shows "-"
    assert merged["tasks"]["passkey"]["options"]["trials"] == 1 and "ppl" in merged["tasks"]  # same options: one entry
    report = (out / "report.md").read_text()
    assert "| none |" in report and "| eabf-512 |" in report and "ppl" in report
    assert "| second | 1 | eabf-512 | - |" in (out / "study.md").read_text()
    assert "cream-linear-512" in (out / "study.md").read_text()  # listed as not run yet, in slice "other"
    # a row run again (e.g. in another GPU window) replaces its entry; the slice's other rows stay
    before = json.loads((out / "second" / "results.json").read_text())
    study_module.study("tiny", out, device="cpu", progress=False, slice_name="second", only=["eabf-512"])
    after = json.loads((out / "second" / "results.json").read_text())
    assert [r["label"] for r in after["runs"]] == ["eabf-512"] and after["runs"][0]["results"] == before["runs"][0]["results"]
    # the report alone, from what is on disk (e.g. results copied back from a GPU machine)
    (out / "report.md").unlink()
    study_module.study("tiny", out, report_only=True)
    assert (out / "report.md").exists()
    from ropekit.studies.report import render
    render(out)  # `ropekit report DIR` on a directory of slices merges them too
    with pytest.raises(ropekit.RopekitError, match="slice second has no run 'none'"):
        study_module.study("tiny", out, slice_name="second", only=["none"])
    with pytest.raises(ropekit.RopekitError, match="has no slice 'third'"):
        study_module.study("tiny", out, slice_name="third")


def test_unknown_preset_and_run():
    with pytest.raises(ropekit.RopekitError, match="unknown study preset"):
        study_module.study("nope")
    with pytest.raises(ropekit.RopekitError, match="has no run"):
        study_module.study("smollm2-64k", only=["nope"])
    with pytest.raises(ropekit.RopekitError, match="no results.json"):
        study_module.study("smollm2-64k", "/nonexistent-study-dir", report_only=True)


def test_gpu_preset_budget_is_matched():
    preset = study_module.get_preset("smollm2-64k")
    labels = {r.label for r in preset.runs}
    assert {"eabf-32k", "eabf-64k", "cream-linear-32k", "pose-yarn-64k", "none", "dynamic-free"} <= labels
    for run in preset.runs:
        if run.train and run.recipe == "eabf-paper":
            assert run.options["samples"] == 100  # the ≤ 100-sample budget
        if run.strategy in ("cream", "pose"):
            factor = int(run.target.rstrip("k")) // 8
            assert run.options["samples"] == 6 * 32 * factor and run.options["max_steps"] == 6


def test_gpu_preset_slices_cover_every_row_once():
    preset = study_module.get_preset("smollm2-64k")
    slices = study_module.preset_slices(preset)
    assert [s.name for s in slices] == ["headline", "keep", "training-free", "self-extend", "finetuned-32k", "rest-64k"]  # none left over
    listed = [label for s in slices for label in s.labels]
    assert sorted(listed) == sorted(r.label for r in preset.runs)  # each row in exactly one slice
    headline = study_module.get_slice(preset, "headline")
    assert headline.labels == ("eabf-32k", "eabf-mix-32k", "cream-yarn-64k", "none", "eabf-free") and headline.lengths == (16384, 32768, 65536)
    assert headline.task_lengths == {"ppl": (4096, 8192, 16384, 32768, 65536)}  # the original's in-window perplexity, same protocol
    assert rows_by_label(preset)["eabf-mix-32k"].options == rows_by_label(preset)["eabf-32k"].options  # only the data differs
    keep = study_module.get_slice(preset, "keep")  # the chosen recipe in the headline's protocol, same budget
    assert keep.labels == ("eabf-keep-32k",) and (keep.lengths, keep.tasks, keep.task_lengths) == (headline.lengths, headline.tasks, headline.task_lengths)
    assert rows_by_label(preset)["eabf-keep-32k"].options == rows_by_label(preset)["eabf-32k"].options
    assert headline.tasks["passkey"]["trials"] == 20 and headline.tasks["ppl"]["windows"] == 3
    assert all(1 / 3 <= p <= 2 / 3 for p in headline.tasks["kv"]["positions"])
    rows = {r.label: r for r in preset.runs}
    assert rows["yarn-logscale-32k"].method == "yarn+logscale" and rows["yarn-logscale-32k"].options == rows["eabf-32k"].options
    assert not rows["self-extend-free"].train and rows["self-extend-free"].method == "self_extend"
    # 135M rows train at full speed: no activation recomputation, no mid-run checkpoint writes (a cut row stops at its deadline)
    assert preset.common["gradient_checkpointing"] is False and preset.common["save_steps"] >= 1000


def test_interrupted_training_resumes_from_its_checkpoint_and_train_only_stops_before_evaluation(tmp_path, monkeypatch):
    preset = tiny_preset(tmp_path, (Slice("trained", "one trained row", ("eabf-512",), (400,), {"passkey": {"trials": 1}}),))
    preset = Preset(preset.name, preset.description, preset.model, preset.runs, preset.lengths, preset.tasks,
                    {**preset.common, "save_steps": 1}, preset.slices)
    monkeypatch.setitem(study_module.PRESETS, "tiny", preset)
    out = tmp_path / "study"
    assert study_module.study("tiny", out, device="cpu", progress=False, slice_name="trained", train_only=True) is None
    run_dir = out / "trained" / "runs" / "eabf-512"
    assert (run_dir / "training_summary.json").exists() and not (out / "trained" / "results.json").exists()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    (run_dir / "training_summary.json").unlink()  # as if the call's time limit hit after step 1
    shutil.rmtree(run_dir / "checkpoint-2")
    merged = study_module.study("tiny", out, device="cpu", progress=False, slice_name="trained")
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["overrides"]["resume"] is True and summary["steps"] == 2
    assert [r["label"] for r in merged["runs"]] == ["eabf-512"]


def fake_run(label, scores, slice_name="s", device="NVIDIA H100 80GB HBM3 ×1 (CUDA 13.0)", **extra):
    """scores: {task: {length: score or a dict of the task's per-length data}}."""
    results = {task: {str(n): (v if isinstance(v, dict) else {"score": v}) for n, v in per.items()} for task, per in scores.items()}
    return {"label": label, "results": results, "slice": slice_name, "environment": {"device": device}, **extra}


def fake_results(runs, lengths=(8192, 16384, 32768, 65536)):
    tasks = {t: {"metric": "m", "higher_is_better": t != "ppl", "summary": t, "options": {}} for t in ("passkey", "niah", "ppl", "kv")}
    env = {"ropekit": "0.1.0", "torch": "2.11", "transformers": "5.17", "python": "3.12", "device": "NVIDIA H100", "command": "ropekit study"}
    return {"format": 2, "kind": "study", "seed": 0, "lengths": list(lengths), "tasks": tasks, "environment": env, "started": "t",
            "seconds": 1.0, "runs": runs}


def test_goal_checks_read_the_merged_numbers():
    full = {n: 100.0 for n in (16384, 32768, 65536)}
    niah = {n: {"score": 95.0, "depths": {"0.0": 100.0, "0.5": 90.0}} for n in (16384, 32768, 65536)}
    runs = [fake_run("none", {"ppl": {8192: 80.0}}),
            fake_run("eabf-32k", {"passkey": full, "niah": niah, "ppl": {65536: 79.0}}, training={"seconds": 130.0}),
            fake_run("cream-yarn-64k", {"passkey": {32768: 95.0, 65536: 90.0},
                                        "kv": {65536: {"score": 60.0, "positions": {"0.0": 100.0, "0.375": 50.0, "0.5": 50.0, "1.0": 100.0}}}}),
            fake_run("pose-yarn-64k", {"kv": {65536: {"score": 60.0, "positions": {"0.0": 100.0, "0.5": 25.0, "0.625": 0.0, "1.0": 100.0}}}})]
    lines = "\n".join(study_module.goal_checks(fake_results(runs)))
    assert "passkey @16K 100 (goal 100: met)" in lines and "worst NIAH cell 90 (goal ≥ 90: met)" in lines
    assert "PPL @64K 79.0 vs the original's @8K 80.0 (goal ≤: met)" in lines
    assert "training 130 s on NVIDIA H100 80GB HBM3 ×1 (CUDA 13.0) (goal ≤ 10 GPU-minutes: met)" in lines
    assert "**eabf-64k**: not run yet" in lines
    assert "passkey @64K 90 (goal ≥ 95: **missed**)" in lines
    assert "kv middle third @64K 50 vs pose-yarn-64k 25 (goal ≥: met)" in lines  # compared on the common position 0.5 only
    runs[1]["results"]["niah"]["32768"]["depths"]["0.5"] = 80.0
    assert "worst NIAH cell 80 (goal ≥ 90: **missed**)" in "\n".join(study_module.goal_checks(fake_results(runs)))


def test_ordering_table_confirms_or_refutes():
    def row(method, passkey, ppl):
        return fake_run(f"{method}-32k", {"passkey": {32768: passkey}, "ppl": {32768: ppl}})

    results = fake_results([row("eabf", 100, 80), row("abf", 90, 85), row("linear", 0, 300), row("yarn", 60, 90)])
    table = study_module.ordering_table(results)
    assert "| 32k (4×) | passkey @32K | 100 | 90 | 0 | 60 | confirmed |" in table
    assert "| 32k (4×) | ppl @32K | 80.0 | 85.0 | 300.0 | 90.0 | confirmed |" in table
    assert any(line.startswith("| 64k (8×) | passkey") and line.endswith("not measured yet |") for line in table)
    results = fake_results([row("eabf", 100, 80), row("abf", 90, 85), row("linear", 0, 300), row("yarn", 95, 84)])
    assert "| 32k (4×) | passkey @32K | 100 | 90 | 0 | 95 | refuted |" in study_module.ordering_table(results)


def test_merge_results_unions_and_refuses_duplicate_labels():
    from ropekit.eval.merge import merge_results

    a = fake_results([fake_run("x", {"passkey": {4096: 100.0}})], lengths=(4096,))
    b = fake_results([fake_run("y", {"passkey": {8192: 50.0}}, device="CPU")], lengths=(8192,))
    b["tasks"]["passkey"]["options"] = {"trials": 3}
    merged = merge_results([("a", a), ("b", b)])
    assert merged["lengths"] == [4096, 8192] and [r["label"] for r in merged["runs"]] == ["x", "y"]
    assert merged["tasks"]["passkey"]["options"] == {"by slice": {"a": {}, "b": {"trials": 3}}}
    assert merged["runs"][1]["task_options"]["passkey"] == {"trials": 3} and merged["merged_from"] == ["a", "b"]
    with pytest.raises(ropekit.RopekitError, match="run 'x' is in two result sets"):
        merge_results([("a", a), ("c", a)])
    again = fake_results([fake_run("x", {"passkey": {4096: 0.0}})], lengths=(4096,))
    assert merge_results([("a", a), ("a", again)], replace=True)["runs"][0]["results"]["passkey"]["4096"]["score"] == 0.0


def test_scores_of_two_task_format_versions_are_never_merged_into_one_column(tmp_path):
    from ropekit.eval.merge import merge_results
    from ropekit.studies.report import render

    old = fake_results([fake_run("eabf-32k", {"kv": {16384: 0.0}, "passkey": {16384: 100.0}}, model="m")], lengths=(16384,))  # before versions: v1
    new = fake_results([fake_run("none", {"kv": {16384: 40.0}, "passkey": {16384: 0.0}}, model="m")], lengths=(16384,))
    new["tasks"]["kv"]["version"] = 2
    merged = merge_results([("headline", old), ("headline", new)], replace=True)
    assert merged["tasks"]["kv"]["version"] == 2 and merged["tasks"]["kv@v1"]["version"] == 1
    assert "not comparable with v2" in merged["tasks"]["kv@v1"]["summary"]
    first, second = merged["runs"]
    assert set(first["results"]) == {"kv@v1", "passkey"} and first["task_versions"] == {"kv@v1": 1, "passkey": 1}
    assert set(second["results"]) == {"kv", "passkey"} and second["task_versions"] == {"kv": 2, "passkey": 1}
    assert merge_results([("headline", merged)])["runs"][0]["task_versions"] == first["task_versions"]  # stable when merged again
    (tmp_path / "results.json").write_text(json.dumps(merged))
    report = render(tmp_path)[0].read_text()
    assert "## kv@v1 (format v1)" in report and "## kv (format v2)" in report
    kv = report.split("## kv (format v2)")[1].split("##")[0]
    assert "| eabf-32k | - |" in kv and "| none | 40.0 |" in kv  # the old score is not in the new column


def rows_by_label(preset):
    return {r.label: r for r in preset.runs}
