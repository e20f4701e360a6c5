"""The benchmark scripts end to end on tiny shapes (--smoke): each writes a results file with the schema the GPU
figures will be read from, and the pieces that decide what is measured behave as documented."""

import argparse
import copy
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ropekit
from ropekit.testing import random_ids, tiny_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
common = importlib.import_module("_common")


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # a smoke run uses one thread


def smoke(script: str, tmp_path, *extra) -> dict:
    module = importlib.import_module(script)
    path = tmp_path / f"{script}.json"
    module.main(["--smoke", "--json", str(path), *extra])
    data = json.loads(path.read_text())
    assert common.validate(data) == [], common.validate(data)
    assert data["benchmark"] == script and data["smoke"] is True and data["device"].startswith("CPU")
    assert data["command"].startswith("python") and data["torch"] == torch.__version__
    return data


def test_logit_scale_overhead_smoke(tmp_path):
    data = smoke("logit_scale_overhead", tmp_path)
    rows = {(r["kind"], r["length"]): r for r in data["rows"]}
    assert sorted(rows) == sorted([("step", 64), ("step", 128), ("prefill", 64), ("prefill", 128), ("decode", 128),
                                   ("attention", 64), ("attention", 128)])
    for row in rows.values():
        assert row["status"] == "ok" and row["repeats"] == 3
        assert row["abf"]["n"] == row["eabf"]["n"] == 3
        per_round = [e / a for e, a in zip(row["eabf"]["times_s"], row["abf"]["times_s"])]
        assert row["ratio"] == pytest.approx(statistics.median(per_round))  # paired by round, not two medians
        assert row["ratio_range"] == [pytest.approx(min(per_round)), pytest.approx(max(per_round))]
        assert row["ratio_range"][0] <= row["ratio_ci"][0] <= row["ratio"] <= row["ratio_ci"][1] <= row["ratio_range"][1]
    assert rows[("decode", 128)]["tokens"] == 4
    summary = data["summary"]
    assert summary["max_step_ratio"] == max(rows[("step", n)]["ratio"] for n in (64, 128))
    assert summary["max_step_ratio_hi"] == max(rows[("step", n)]["ratio_ci"][1] for n in (64, 128))
    assert summary["max_prefill_ratio"] == max(rows[("prefill", n)]["ratio"] for n in (64, 128))
    assert summary["max_decode_ratio"] == rows[("decode", 128)]["ratio"]
    assert summary["repeats"] == {"step": 3, "prefill": 3, "decode": 3, "attention": 3}


def test_logit_scale_overhead_skips_what_the_budget_cannot_fit(tmp_path):
    module = importlib.import_module("logit_scale_overhead")
    data = module.main(["--smoke", "--json", str(tmp_path / "x.json"), "--budget", "0"])
    assert len(data["rows"]) == 7 and all(r["status"].startswith("skipped: time budget") for r in data["rows"])
    assert data["summary"]["max_step_ratio"] is None
    args = argparse.Namespace(shape="tinyllama-1.1b", warmup=2, decode_tokens=16, heads=32, head_dim=128)
    planner = module.Planner(1e12, args)
    per_call = module.row_flops("step", 32768, args) / (0.35 * 1e12)  # the first guess: 35% of the matmul peak
    guess = planner.expected("step", 32768, 10)
    planner.learn("step", 32768, 2 * per_call)  # the rows of this kind turn out twice as slow as guessed
    assert planner.expected("step", 32768, 10) - guess == pytest.approx(2 * (2 + 1 + 10) * per_call)  # 2 variants × calls
    assert planner.expected("step", 16384, 10) < planner.expected("step", 32768, 10)
    assert planner.expected("prefill", 32768, 10) == module.Planner(1e12, args).expected("prefill", 32768, 10)  # per kind


def test_train_throughput_smoke(tmp_path):
    data = smoke("train_throughput", tmp_path)
    rows = {(r["group"], r["length"], r["variant"]): r for r in data["rows"]}
    for length in (128, 256):
        head = {v: rows[("headline", length, v)] for v in ("hf", "hf-best", "ropekit", "ropekit-default")}
        for row in head.values():
            assert row["status"] == "ok", row
            assert row["step"]["n"] == 3 and row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["mfu_spec"] is None
        assert head["hf"]["settings"] == {**head["hf"]["settings"], "loss": "full", "adamw": "standard", "ckpt": "on", "eabf": False}
        assert head["hf"]["checkpointing"] == "on" and "vs_hf" not in head["hf"]
        assert head["hf-best"]["settings"]["loss"] == "full"  # no liger-kernel on a CPU: transformers' own loss
        assert head["hf-best"]["settings"]["adamw"] == "fused" and head["hf-best"]["checkpointing"] == "off: the step fits"
        assert head["ropekit"]["settings"]["loss"] == "chunked" and head["ropekit"]["settings"]["eabf"] is True  # `ropekit train` on a CPU
        assert head["ropekit"]["checkpointing"] == "off: the step fits" and head["ropekit-default"]["checkpointing"] == "on"
        hf, best, ropekit = (head[v]["step"]["times_s"] for v in ("hf", "hf-best", "ropekit"))
        assert head["ropekit"]["vs_hf"]["median"] == pytest.approx(statistics.median([a / b for a, b in zip(hf, ropekit)]))
        assert head["ropekit"]["vs_hf_best"]["median"] == pytest.approx(statistics.median([a / b for a, b in zip(best, ropekit)]))
        assert rows[("knobs", length, "+liger")]["status"].startswith("skipped")  # no GPU here
        for knob in ("hf", "+eabf", "+chunked", "+tiled", "+no-ckpt", "+fused-adamw", "+packing"):
            assert rows[("knobs", length, knob)]["status"] == "ok"
        assert rows[("knobs", length, "+no-ckpt")]["checkpointing"] == "off"
    summary = data["summary"]
    assert data["stand_ins"] == {"16k": 128, "32k": 256}
    ropekit = rows[("headline", 128, "ropekit")]
    assert summary["ratio_16k"] == ropekit["vs_hf"]["median"] and summary["vs_best_16k"] == ropekit["vs_hf_best"]["median"]
    assert summary["ratio_16k_ci"][0] <= summary["ratio_16k"] <= summary["ratio_16k_ci"][1]
    assert summary["ratio_32k"] == rows[("headline", 256, "ropekit")]["vs_hf"]["median"]
    assert summary["mfu_16k"] == ropekit["mfu"] and summary["checkpointing_16k"]["hf"] == "on"
    assert data["peak_tflops"] > 0 and data["spec_peak_tflops"] is None


def test_train_throughput_respects_the_budget(tmp_path):
    data = importlib.import_module("train_throughput").main(["--smoke", "--json", str(tmp_path / "x.json"), "--budget", "0", "--knobs", "none"])
    assert len(data["rows"]) == 8 and all(r["status"].startswith("skipped: time budget") for r in data["rows"])


def test_variants_of_a_group_share_weights_and_moments():
    """The interleaved variants are instances over one set of parameters and one set of AdamW moments: a step of one
    moves the weights every other sees, and only one set of moments exists."""
    tt = importlib.import_module("train_throughput")
    config = common.config_for("tiny")
    hf = tt.Variant("hf", tt.HEADLINE["hf"], config, 32)
    tt.adopt_moments(hf, hf)
    best = tt.Variant("hf-best", tt.HEADLINE["hf-best"], config, 32, shared=hf)
    tt.adopt_moments(best, hf)
    assert len(hf.params) == len(best.params) and all(a is b for a, b in zip(hf.params, best.params))
    before = hf.model.model.layers[0].mlp.up_proj.weight.detach().clone()
    best.step()
    assert not torch.equal(hf.model.model.layers[0].mlp.up_proj.weight, before)
    for p in hf.params:
        assert best.optimizer.state[p]["exp_avg"] is hf.optimizer.state[p]["exp_avg"]
        assert best.optimizer.state[p]["exp_avg_sq"] is hf.optimizer.state[p]["exp_avg_sq"]
    assert hf.optimizer.defaults["fused"] in (None, False) and best.optimizer.defaults["fused"] is True


def test_checkpointing_if_needed_is_decided_by_trying(monkeypatch):
    tt = importlib.import_module("train_throughput")
    v = tt.Variant("hf-best", tt.HEADLINE["hf-best"], common.config_for("tiny"), 32)
    step = v.step
    calls = []

    def checkpointing():  # transformers ≥ 5.21 renamed the property
        name = "is_activation_checkpointing" if hasattr(type(v.model), "is_activation_checkpointing") else "is_gradient_checkpointing"
        return getattr(v.model, name)

    def step_that_needs_checkpointing():
        calls.append(checkpointing())
        if not checkpointing():
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        step()

    monkeypatch.setattr(v, "step", step_that_needs_checkpointing)
    assert v.warm_up(1) > 0
    assert v.checkpointing == "on: out of memory without" and calls == [False, True, True]
    monkeypatch.setattr(v, "step", lambda: (_ for _ in ()).throw(ValueError("not memory")))
    with pytest.raises(ValueError):  # only an out-of-memory turns checkpointing on; anything else is an error
        v.try_step()


def test_a_variant_that_fails_is_a_row_and_the_others_are_still_timed(tmp_path, monkeypatch):
    tt = importlib.import_module("train_throughput")
    warm_up = tt.Variant.warm_up

    def warm_up_or_fail(self, steps):
        if self.name == "hf-best":
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return warm_up(self, steps)

    monkeypatch.setattr(tt.Variant, "warm_up", warm_up_or_fail)
    torch.set_num_threads(1)  # tiny shapes lose much from a second thread on a loaded machine
    results = common.Results("train_throughput", tmp_path / "x.json")
    ctx = {"results": results, "budget": common.Budget(None), "args": argparse.Namespace(warmup=1, steps=3), "shape": "tiny",
           "peak": 1e11, "spec_peak": None}
    rows = tt.run_group("headline", tt.HEADLINE, common.config_for("tiny"), 64, ctx)
    assert rows["hf-best"]["status"] == "out of memory"
    assert [rows[v]["status"] for v in ("hf", "ropekit", "ropekit-default")] == ["ok", "ok", "ok"]
    assert "vs_hf_best" not in rows["ropekit"] and rows["ropekit"]["vs_hf"]["n"] == 3
    assert json.loads((tmp_path / "x.json").read_text())["rows"] == json.loads(json.dumps(results.rows))  # all on disk
    assert tt.summarize(results.rows, {"16k": 64})["vs_best_16k"] is None


def test_interleaved_rounds_stop_at_the_deadline_and_report_each_round():
    seen = []
    fns = {"a": lambda: time.sleep(0.01), "b": lambda: time.sleep(0.02)}
    timed = common.measure_interleaved(fns, repeats=50, warmup=1, deadline=time.time() + 0.3,
                                       on_round=lambda t: seen.append((len(t["a"]), len(t["b"]))))
    assert 3 <= timed["a"]["n"] < 50 and timed["a"]["n"] == timed["b"]["n"]
    assert seen == [(i, i) for i in range(1, timed["a"]["n"] + 1)]
    assert timed["b"]["median_s"] > timed["a"]["median_s"]
    assert common.measure_interleaved(fns, repeats=5, warmup=0, deadline=time.time() - 1) == {"a": None, "b": None}


def test_paired_ratio():
    assert common.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == {"median": 2.0, "lo": 2.0, "hi": 2.0, "min": 2.0, "max": 2.0, "n": 3}
    num = [1.00, 1.02, 0.99, 1.01, 1.03, 1.00, 0.98, 1.02, 1.01, 1.00]
    result = common.paired_ratio(num, [1.0] * 10)
    assert result["median"] == pytest.approx(1.005) and result["min"] == 0.98 and result["max"] == 1.03
    assert 0.98 <= result["lo"] <= result["median"] <= result["hi"] <= 1.03 and result["hi"] - result["lo"] < 0.05
    assert common.paired_ratio(num, [1.0] * 10) == result  # a fixed seed: the file's interval is reproducible
    assert common.paired_ratio([], []) is None


def test_spec_peaks_by_device_name():
    assert common.spec_peak("NVIDIA H100 80GB HBM3") == common.spec_peak("NVIDIA H200") == 989e12
    assert common.spec_peak("NVIDIA H100 PCIe") == 756e12 and common.spec_peak("NVIDIA H100 NVL") == 835e12
    assert common.spec_peak("NVIDIA GeForce RTX 4090") is None
    if not torch.cuda.is_available():
        assert common.spec_peak() is None


def test_a_killed_run_keeps_every_finished_row(tmp_path):
    """SIGKILL a benchmark after its first row and during the rounds of its second: the file parses and holds the
    finished row and the rounds the second had completed."""
    path = tmp_path / "killed.json"
    command = [sys.executable, str(BENCHMARKS / "logit_scale_overhead.py"), "--json", str(path), "--shape", "tiny",
               "--kinds", "prefill,attention", "--prefill-lengths", "64", "--lengths", "2k", "--heads", "8", "--kv-heads", "8",
               "--head-dim", "64", "--repeats", "prefill=3,attention=400", "--warmup", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while time.time() < deadline and process.poll() is None:
            rows = json.loads(path.read_text())["rows"] if path.exists() else []
            if len(rows) == 2 and rows[1]["repeats"] >= 1:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL  # killed mid-run, not finished
    data = json.loads(path.read_text())
    assert common.validate(data) == []
    prefill, attention = data["rows"]
    assert prefill["kind"] == "prefill" and prefill["status"] == "ok" and prefill["repeats"] == 3
    assert data["summary"]["max_prefill_ratio"] == prefill["ratio"]
    assert attention["kind"] == "attention" and attention["status"].startswith("partial")
    assert attention["abf"]["n"] == attention["eabf"]["n"] >= attention["repeats"] >= 1


def test_eval_throughput_smoke(tmp_path):
    data = smoke("eval_throughput", tmp_path)
    assert {r["task"] for r in data["rows"]} == {"passkey", "niah"}
    assert all(r["same_answers"] and r["samples"] == 3 for r in data["rows"])
    assert data["summary"]["same_answers"] is True


def test_niah_grid_smoke(tmp_path):
    data = smoke("niah_grid", tmp_path)
    assert [r["way"] for r in data["rows"]] == ["per-cell", "batched", "shared"]
    assert all(r["same_answers_as_first"] and r["cells"] == 6 for r in data["rows"])
    assert data["summary"]["seconds"] == min(r["seconds"] for r in data["rows"])


def test_max_length_probe_in_process():
    max_length = importlib.import_module("max_length")
    for variant, lora in (("plain", 0), ("ropekit", 4)):
        result = max_length.probe("tiny", 96, variant, lora)
        assert result["status"] == "ok" and len(result["step_s"]) == 2


def test_max_length_ladder_stops_at_first_failure_and_respects_the_budget():
    climb = importlib.import_module("max_length").climb
    probed = []

    def run(length):
        probed.append(length)
        return {"status": "ok" if length <= 192 else "out of memory", "seconds": length / 1000}

    steps = climb([96, 128, 192, 256, 384], run, {}, lambda: 1e9, lambda n, prev: None)
    assert probed == [96, 128, 192, 256] and [r["status"] for _, r in steps][-1] == "out of memory"
    probed.clear()  # already measured rungs are not repeated
    climb([96, 128, 192], run, {96: {"status": "ok"}, 128: {"status": "ok"}}, lambda: 1e9, lambda n, prev: None)
    assert probed == [192]
    probed.clear()  # a probe expected to overrun the time left is not started
    steps = climb([96, 128, 192], run, {}, lambda: 6.0, lambda n, prev: None if prev is None else 5.0 * n / 96)
    assert probed == [96] and steps[-1] == (128, {"status": "not tried: time budget", "expected_s": 7})


def test_max_length_summary_takes_the_longest_success():
    longest = importlib.import_module("max_length").longest
    rows = [{"shape": "tinyllama-1.1b", "lora": 0, "variant": "ropekit", "length": n, "status": s}
            for n, s in ((98304, "ok"), (131072, "ok"), (196608, "out of memory"))]
    assert longest(rows, "tinyllama-1.1b", False, "ropekit") == 131072
    assert longest(rows, "tinyllama-1.1b", False, "plain") is None and longest(rows, "llama2-7b", True, "ropekit") is None


@pytest.mark.slow
def test_max_length_smoke_runs_each_probe_in_a_subprocess(tmp_path):
    """(LoRA probes in subprocesses: tests/test_gpu_runbook.py runs perf-max-length.sh on the 6.7B stand-in.)"""
    path = tmp_path / "max_length.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "max_length.py"), "--smoke", "--json", str(path)], check=True, timeout=600)
    data = json.loads(path.read_text())
    assert common.validate(data) == []
    assert [(r["variant"], r["status"]) for r in data["rows"]] == [("plain", "ok"), ("ropekit", "ok")]
    assert all(r["seconds"] > 0 for r in data["rows"])


def test_schema_check_names_what_is_wrong():
    good = {"benchmark": "niah_grid", "device": "x", "torch": "2", "transformers": "5", "command": "python b.py", "rows": [{}],
            "summary": {"seconds": 3.0}}
    assert common.validate(good) == []
    assert common.validate({**good, "summary": {}}) == ["summary.seconds missing"]
    assert common.validate({**good, "summary": {"seconds": None}}) == []  # not measured (yet) on a GPU run
    assert common.validate({**good, "smoke": True, "summary": {"seconds": None}}) == ["summary.seconds is null in a smoke run"]
    assert common.validate({**good, "summary": {"seconds": "fast"}}) == ["summary.seconds = 'fast' is not a number"]
    assert "'device' missing or not str" in common.validate({k: v for k, v in good.items() if k != "device"})


def test_gpu_tags_and_default_paths():
    assert [common.tag_of(n) for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S")] == \
        ["h100", "h200", "a100", "l40s"]


def test_scale_off_is_exactly_abf():
    """logit_scale_overhead times EABF against the same model with the scale switched off: that must be ABF."""
    scale_off = importlib.import_module("logit_scale_overhead").scale_off
    base = tiny_model("llama")
    eabf = ropekit.extend(copy.deepcopy(base), "eabf", target_length=256)
    abf = ropekit.extend(copy.deepcopy(base), "abf", target_length=256)
    ids = random_ids(200)
    with torch.no_grad():
        with scale_off(eabf):
            off = eabf(ids).logits
        on = eabf(ids).logits
        assert torch.equal(off, abf(ids).logits)
    assert not torch.allclose(on, off)  # the scale acts beyond the native 64 tokens


@pytest.mark.slow
def test_main_job_smoke(tmp_path):
    """benchmarks/main_job.py end to end on the tiny model: the job against its plain forwards, every (method, length)."""
    path = tmp_path / "main_job.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "main_job.py"), "--smoke", "--json", str(path)], check=True,
                   capture_output=True, timeout=600)
    data = json.loads(path.read_text())
    assert data["job_seconds"] > 0 and data["baseline_seconds"] > 0
    assert data["ratio"] == pytest.approx(data["job_seconds"] / data["baseline_seconds"])
    assert {(r["method"], r["length"]) for r in data["rows"]} == {(m, n) for m in ("none", "yarn", "eabf") for n in (600, 900)}
    assert data["machine"]["fp32_gflops"] > 0


def test_keep_the_model_smoke(tmp_path):
    """benchmarks/keep_the_model.py on a tiny model: the starting model, the extended control and each arm scored on
    the dev and test items, per-arm summaries and the docs table."""
    module = importlib.import_module("keep_the_model")
    path = tmp_path / "keep.json"
    data = module.main(["--smoke", "--json", str(path), "--seeds", "0", "--arms", "paper-2e-4", "mix75-distill-2e-4"])
    assert json.loads(path.read_text())["runs"].keys() == {"paper-2e-4/seed0", "mix75-distill-2e-4/seed0"}
    assert set(data["before"]) == set(data["extended"]) == {"dev", "test"} and data["before"]["dev"]["ppl"] != data["before"]["test"]["ppl"]
    assert data["runs"]["paper-2e-4/seed0"]["after"]["test"]["ppl"] != data["before"]["test"]["ppl"]  # training changed the model
    table = module.table(data)
    assert len(table) == 5 and table[2].startswith("| EABF applied, not trained") and "`mix75-distill-2e-4` | 1 |" in table[4]
