"""The study pipeline end to end on a tiny model: train runs, evaluation, report, goal summary, resume."""

import json

import pytest

import ropekit
from ropekit import study as study_module
from ropekit.study import Preset, Run
from ropekit.testing import save_tiny_checkpoint, tiny_tokenizer


def test_study_runs_trains_evaluates_and_resumes(tmp_path, monkeypatch):
    save_tiny_checkpoint(tmp_path / "model", vocab_size=len(tiny_tokenizer()))
    text = tmp_path / "doc.txt"
    text.write_text(" ".join(f"token{i % 50} and word{i % 7}." for i in range(2000)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Remember {i}. " + "Filler. " * 30 + "Which?"},
                                                     {"role": "assistant", "content": f"{i}."}]}) + "\n" for i in range(6)))
    preset = Preset("tiny", "a tiny study", str(tmp_path / "model"), (
        Run("none", "none", "512", train=False),
        Run("eabf-512", "eabf", "512", recipe="smoke", options={"data": str(chat), "max_steps": 2}),
        Run("cream-linear-512", "linear", "512", recipe="cream-paper", strategy="cream",
            options={"data": str(text), "max_steps": 2, "warmup_steps": 0, "samples": 4}),
    ), (400, 500), {"passkey": {"trials": 1}, "ppl": {"windows": 1, "tail": 32, "source": str(text)}},
        {"learning_rate": 1e-3, "batch_size": 2, "save_steps": 100})
    monkeypatch.setitem(study_module.PRESETS, "tiny", preset)
    results = study_module.study("tiny", tmp_path / "study", device="cpu", progress=False)
    assert [r["label"] for r in results["runs"]] == ["none", "eabf-512", "cream-linear-512"]
    assert results["runs"][2]["record"]["method"] == "linear"
    summary = json.loads((tmp_path / "study" / "runs" / "cream-linear-512" / "training_summary.json").read_text())
    assert summary["strategy"] == "cream" and summary["data"]["examples"] == 4 and summary["train_length"] == 64
    md = (tmp_path / "study" / "study.md").read_text()
    assert "## Goals" in md and "eabf-512" in md and (tmp_path / "study" / "eval" / "report.html").exists()
    stamp = (tmp_path / "study" / "runs" / "eabf-512" / "model.safetensors").stat().st_mtime_ns
    study_module.study("tiny", tmp_path / "study", device="cpu", progress=False)  # resumes: nothing retrained
    assert (tmp_path / "study" / "runs" / "eabf-512" / "model.safetensors").stat().st_mtime_ns == stamp


def test_unknown_preset_and_run():
    with pytest.raises(ropekit.RopekitError, match="unknown study preset"):
        study_module.study("nope")
    with pytest.raises(ropekit.RopekitError, match="has no run"):
        study_module.study("smollm2-64k", only=["nope"])


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
