"""The GPU runbook (benchmarks/gpu/) dry-run on a CPU: staging a file in halves, the study call on the real preset's
rows at toy scale, filing what comes back, the plan's estimates, and (slow) every device-call script with --smoke."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))
sys.path.insert(0, str(ROOT / "benchmarks"))
stage = importlib.import_module("stage")


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_split_join_verify_roundtrip(tmp_path):
    original = tmp_path / "model.gguf"
    original.write_bytes(os.urandom(1_000_001))
    digest = stage.sha256(original)
    parts = stage.split(original, [tmp_path / "a", tmp_path / "b"])
    assert [p.name for p in parts] == ["model.gguf.part1of2", "model.gguf.part2of2"]
    assert sum(p.stat().st_size for p in parts) == 1_000_001
    joined = tmp_path / "there" / "model.gguf"
    stage.join(joined, digest, [tmp_path / "a", tmp_path / "b"])
    assert joined.read_bytes() == original.read_bytes()
    with pytest.raises(SystemExit, match="part2of2 is missing"):
        stage.join(tmp_path / "x" / "model.gguf", digest, [tmp_path / "a"])
    with pytest.raises(SystemExit, match="expected 0000"):
        stage.join(tmp_path / "y" / "model.gguf", "0000", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "y" / "model.gguf").exists()  # a bad join leaves nothing behind


def test_study_call_smoke_runs_the_headline_rows_and_brings_back_one_file(tmp_path):
    study_call = importlib.import_module("study_call")
    back = tmp_path / "out"
    assert study_call.main(["--smoke", "--slice", "headline", "--output", str(tmp_path / "study"), "--bring-back", str(back)]) == 0
    assert [p.name for p in back.iterdir()] == ["results-headline.json"]
    results = json.loads((back / "results-headline.json").read_text())
    assert results["slice"] == "headline"
    assert [r["label"] for r in results["runs"]] == ["eabf-32k", "eabf-mix-32k", "cream-yarn-64k", "none", "eabf-free"]
    assert set(results["tasks"]) == {"passkey", "ppl", "niah", "kv"}  # the headline's task set, at toy scale
    assert results["runs"][2]["training"]["strategy"] == "cream" and results["runs"][2]["record"]["method"] == "yarn"
    # the original is read in the same protocol; perplexity also at the shorter (in-window) lengths
    assert list(results["runs"][3]["results"]["ppl"]) == ["300", "500", "700", "800"] and results["tasks"]["kv"]["version"] == 2
    assert results["runs"][0]["training"]["gradient_checkpointing"] is False
    # filed here: merged into the slice's results and the study re-rendered
    collect = importlib.import_module("collect")
    lines = collect.collect([back], tmp_path / "docs", tmp_path / "bench")
    assert any("results-headline.json →" in line for line in lines)
    study_md = (tmp_path / "docs" / "study.md").read_text()
    assert "| headline | 5 | eabf-32k, eabf-mix-32k, cream-yarn-64k, none, eabf-free | - |" in study_md and (tmp_path / "docs" / "report.md").exists()


def test_a_call_killed_from_outside_leaves_its_finished_parts(tmp_path):
    """SIGKILL mid-way (as when the GPU window's budget ends): the loss log, the training summary and every finished
    evaluation step are already in the bring-back folder, as whole files."""
    import signal
    import time

    back = tmp_path / "out"
    command = [sys.executable, str(GPU / "study_call.py"), "--smoke", "--slice", "headline", "--only", "eabf-mix-32k,none,eabf-free",
               "--output", str(tmp_path / "study"), "--bring-back", str(back), "--deadline", "600"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = back / "partial-headline.json"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:  # kill once the first row is evaluated (the 2nd has begun)
            if partial.exists() and len(json.loads(partial.read_text())["runs"]) >= 2:
                break
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the call ended before it could be killed mid-way"
    assert not (back / "results-headline.json").exists()
    kept = json.loads(partial.read_text())
    first = kept["runs"][0]
    assert first["label"] == "eabf-mix-32k" and set(first["results"]) == {"passkey", "ppl", "niah", "kv"}
    assert all(first["results"]["passkey"].values())
    assert [json.loads(line)["step"] for line in (back / "trainlog-eabf-mix-32k.jsonl").read_text().splitlines()] == [1]
    assert json.loads((back / "training-eabf-mix-32k.json").read_text())["steps"] == 1
    # filed here like a partial file: the row marked partial, its training attached
    collect = importlib.import_module("collect")
    collect.collect([back], tmp_path / "docs", tmp_path / "bench", render=False)
    filed = {r["label"]: r for r in json.loads((tmp_path / "docs" / "headline" / "results.json").read_text())["runs"]}
    assert filed["eabf-mix-32k"]["partial"] is True and filed["eabf-mix-32k"]["training"]["log"][0]["step"] == 1


def test_collect_files_benchmark_results_and_marks_partial_rows(tmp_path):
    collect = importlib.import_module("collect")
    back = tmp_path / "out"
    back.mkdir()
    bench = {"benchmark": "niah_grid", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "transformers": "5.17.0",
             "command": "python benchmarks/niah_grid.py", "rows": [{"way": "per-cell"}], "summary": {"seconds": 12.5}}
    (back / "niah_grid-h100.json").write_text(json.dumps(bench))
    env = {"ropekit": "0.1.0", "torch": "2.11", "transformers": "5.17", "python": "3.12", "device": "NVIDIA H100", "command": "x"}
    partial = {"format": 2, "kind": "study", "seed": 0, "lengths": [16384], "environment": env, "started": "t", "seconds": 1,
               "tasks": {"passkey": {"metric": "accuracy %", "higher_is_better": True, "summary": "p", "options": {}}},
               "runs": [{"label": "eabf-32k", "results": {"passkey": {"16384": {"score": 100.0}}}}]}
    (back / "partial-headline.json").write_text(json.dumps(partial))
    (back / "perf-1.log").write_text("log\n")
    lines = collect.collect([back], tmp_path / "docs", tmp_path / "bench", render=False)
    assert json.loads((tmp_path / "bench" / "niah_grid-h100.json").read_text())["summary"]["seconds"] == 12.5
    filed = json.loads((tmp_path / "docs" / "headline" / "results.json").read_text())
    assert filed["runs"][0]["partial"] is True and filed["slice"] == "headline"
    assert (tmp_path / "bench" / "logs" / "perf-1.log").exists() and len(lines) == 3


def test_plan_prices_every_row_and_every_call_fits_a_window():
    plan = importlib.import_module("plan")
    calls = plan.study_calls()
    from ropekit.studies.study import get_preset

    planned = [r.label for c in calls if not c["train_only"] for r in c["rows"]]
    assert sorted(planned) == sorted(r.label for r in get_preset("smollm2-64k").runs)  # every row evaluated exactly once
    assert all(c["seconds"] < plan.CALL_LIMIT_S - plan.BUDGET_MARGIN_S for c in calls)
    assert calls[0]["command"].startswith("bash benchmarks/gpu/study.sh headline eabf-32k,")
    eabf = calls[0]["rows"][0]
    # calibrated on eabf-mix-32k's measured training (6.07M tokens in 109 s): 100 × 32K × 2 nominal tokens cost that
    # rate's share, plus the measured set-up
    nominal = 100 * 32768 * 2 / plan.TARGET_TOKENS * plan.TARGET_TRAIN_S
    assert abs(eabf.train_s - (nominal + plan.TARGET_SETUP_S)) < 1
    # the measured call (eabf-mix-32k trained, three rows evaluated: 223 s) is estimated within 25%
    assert 223 * 0.9 < plan.estimate_call("headline", ["eabf-mix-32k", "none", "eabf-free"]) < 223 * 1.25
    for call in calls:
        if call["must_follow_within_30_s"]:
            assert calls[calls.index(call) - 1]["train_only"]
    assert all(c["seconds"] < plan.CALL_LIMIT_S for c in plan.perf_calls()[:5])


def test_plan_counts_only_whole_rows_as_done_and_says_on_which_device(tmp_path):
    plan = importlib.import_module("plan")
    env = {"device": "NVIDIA H200 ×1 (CUDA 13.0)"}
    runs = [{"label": "a", "environment": env}, {"label": "b", "environment": env, "partial": True},
            {"label": "c", "environment": env, "skipped": [{"task": "kv", "length": 65536}]},
            {"label": "d", "environment": {"device": "NVIDIA H100 80GB HBM3 ×1"}, "training": {"stopped_at_deadline": 3}},
            {"label": "e", "environment": {"device": "NVIDIA H100 80GB HBM3 ×1"}, "training": {"stopped_at_deadline": None}}]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "results.json").write_text(json.dumps({"runs": runs}))
    measured = plan.measured_rows(tmp_path)
    assert set(measured) == {"a", "e"} and measured["e"]["device"].startswith("NVIDIA H100")
    left = [r.label for c in plan.study_calls(skip={"eabf-32k", "none"}) for r in c["rows"]]
    assert "eabf-32k" not in left and "none" not in left and "eabf-mix-32k" in left


def run_script(script, work, *args):
    env = {**os.environ, "WORK": str(work), "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(GPU / script), *args, "--smoke"], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_every_device_call_script_dry_runs_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(GPU / "prepare.sh"), "--smoke", str(tmp_path)], check=True, env=env, capture_output=True, timeout=300)
    assert {p.name for p in (tmp_path / "carry").iterdir()} == {"stage-1", "stage-2", "smollm2-tokenizer"}
    for script, args in (("stage-1.sh", ()), ("study.sh", ("headline", "eabf-32k")), ("perf-1.sh", ()),
                         ("perf-max-length.sh", ("llama2-7b", "4", "plain,ropekit"))):
        done = run_script(script, tmp_path, *args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "!!" not in done.stdout, done.stdout[-2000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"stage-1.log", "study-headline.log", "results-headline.json", "perf-1.log",
                                                "logit_scale_overhead-smoke.json", "train_throughput-smoke.json", "max_length-smoke.json"}
    assert "sha256 verified" in (out / "study-headline.log").read_text()
    common = importlib.import_module("_common")
    for name in ("logit_scale_overhead", "train_throughput", "max_length"):
        assert common.validate(json.loads((out / f"{name}-smoke.json").read_text())) == []


@pytest.mark.slow
@pytest.mark.parametrize("slice_name", ["training-free", "self-extend", "finetuned-32k", "rest-64k"])
def test_every_slice_of_the_gpu_preset_runs_at_toy_scale(tmp_path, slice_name):
    """Every row of smollm2-64k (methods, strategies, recipes, options) trains and evaluates, at toy scale."""
    study_call = importlib.import_module("study_call")
    back = tmp_path / "out"
    assert study_call.main(["--smoke", "--slice", slice_name, "--output", str(tmp_path / "study"), "--bring-back", str(back)]) == 0
    results = json.loads((back / f"results-{slice_name}.json").read_text())
    from ropekit.studies.study import get_preset, get_slice

    assert sorted(r["label"] for r in results["runs"]) == sorted(get_slice(get_preset("smollm2-64k"), slice_name).labels)
