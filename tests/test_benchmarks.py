"""The benchmark scripts end to end on tiny shapes (--smoke): each writes a results file with the schema the GPU
figures will be read from, and the pieces that decide what is measured behave as documented."""

import copy
import importlib
import json
import subprocess
import sys
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
    steps = [r for r in data["rows"] if r["kind"] == "step"]
    attention = [r for r in data["rows"] if r["kind"] == "attention"]
    assert [r["length"] for r in steps] == [64, 128] and [r["length"] for r in attention] == [64, 128]
    for row in steps + attention:
        assert row["status"] == "ok" and row["ratio"] > 0
        timings = [row[k] for k in ("abf", "eabf", "plain", "scaled") if k in row]
        assert len(timings) == 2 and all(t["n"] == 2 and t["min_s"] <= t["median_s"] <= t["max_s"] for t in timings)
    assert data["summary"]["max_step_ratio"] == max(r["ratio"] for r in steps)


def test_train_throughput_smoke(tmp_path):
    data = smoke("train_throughput", tmp_path)
    rows = {(r["length"], r["variant"]): r for r in data["rows"]}
    for length in (128, 256):
        for variant in ("plain", "+eabf", "+chunked", "+tiled", "+no-ckpt", "+packing", "ropekit", "best"):
            row = rows[(length, variant)]
            assert row["status"] == "ok", row
            assert row["mfu"] > 0 and row["tokens_per_s"] > 0 and row["step"]["n"] == 2
        assert rows[(length, "+liger")]["status"].startswith("skipped")  # no GPU here
        assert rows[(length, "ropekit")]["knobs"] == ["chunked", "eabf"]  # what `ropekit train` does on a CPU
        assert rows[(length, "plain")]["ratio"] == 1.0
    assert data["stand_ins"] == {"16k": 128, "32k": 256}
    assert data["summary"]["ratio_16k"] == rows[(128, "best")]["ratio"]
    assert data["peak_tflops"] > 0


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
