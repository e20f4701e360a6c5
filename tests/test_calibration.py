"""The retrieval tasks give signal on the embedded default model inside its window (SmolLM2-135M-Instruct, 8K
native): the unmodified model retrieves at 4K (≥ 80%), so a failure beyond 8K is the window's, not the task's. The
samples are those of the calibration table in docs/evaluation.md at 4K (same options and seed; the table's 2K
samples are left to it: 4K is the harder of the two and CI's time is bounded). Slow: run with ``pytest -m slow``."""

import math

import pytest
import torch

import ropekit
from ropekit.eval.tasks import get_task

pytestmark = pytest.mark.slow

LENGTHS = {"passkey": [4096], "niah": [4096], "lines": [4096], "kv": [2048]}  # kv: below the goal at both; 2K is cheaper
# The samples of the calibration table in docs/evaluation.md (`ropekit eval smollm2-135m --tasks TASK --lengths
# 2k,4k --trials N`, seed 0): passkey 10 trials, niah 10 depths × 1, lines and kv 4 record lists × 5 positions.
OPTIONS = {"passkey": {"trials": 10}, "niah": {"trials": 1}, "lines": {"trials": 4}, "kv": {"trials": 4}}
# Over 20 record lists lines scores 75% / 71% (docs/evaluation.md): these 4 lists guard the format from regressing,
# they do not show that lines meets the goal.


@pytest.fixture(scope="module")
def smollm2():
    return ropekit.load_model("smollm2-135m", device="cpu", dtype="float32")


KV_BELOW_GOAL = pytest.mark.xfail(strict=True, reason="kv: 70% at 2K and 4K on SmolLM2 (6-digit values, digits misread), below "
                                   "the 80% goal; docs/evaluation.md, calibration")


@pytest.mark.parametrize("task", [pytest.param(t, marks=KV_BELOW_GOAL) if t == "kv" else t for t in OPTIONS])
def test_original_model_retrieves_inside_its_window(smollm2, task):
    model, tokenizer = smollm2
    results = get_task(task).run(model, tokenizer, LENGTHS[task], seed=0, progress=False, **OPTIONS[task])
    for length in LENGTHS[task]:
        assert results[length]["score"] >= 80.0, f"{task} at {length}: {results[length]['score']:.0f}%"


def test_passkey_ppl_perplexity_matches_the_plain_window(smollm2):
    """The main job's perplexity (natural text after a planted key, the question after it) is within 1% of the
    perplexity of the same text tokens in a plain window of that text alone."""
    from ropekit.corpus import text_tokens
    from ropekit.eval.passkey_ppl import run_passkey_ppl, window_sample

    model, tokenizer = smollm2
    length, tail = 4096, 1024
    job = run_passkey_ppl(model, tokenizer, [length], seed=0, progress=False, trials=1, tail=tail)[length]
    offset = job["trials"][0]["offset"]
    tokens = text_tokens(tokenizer, "paradise_lost", min_tokens=length)
    sample = window_sample(tokenizer, tokens, length, offset, 0.5, job["trials"][0]["key"], tail)
    window = torch.tensor([tokens[offset:offset + sample["text"]]])  # the same natural tokens, nothing planted
    with torch.no_grad():
        logits = model(input_ids=window, use_cache=False).logits[0, -tail - 1:-1].float()
    plain = math.exp(torch.nn.functional.cross_entropy(logits, window[0, -tail:]).item())
    assert job["score"] == 100.0
    assert abs(job["ppl"] / plain - 1) < 0.01, (job["ppl"], plain)


# RULER at 2K on SmolLM2, 10 samples per subtask (docs/evaluation.md, calibration): niah_multikey 60%; the others are
# beyond a 135M model (multivalue 40, multiquery 20, vt 6, cwe 2) and stay out of every default grid.
RULER_WITHIN_REACH = ("niah_multikey",)


def test_ruler_subtasks_within_a_135m_model_reach_half_at_2k(smollm2):
    model, tokenizer = smollm2
    results = get_task("ruler").run(model, tokenizer, [2048], seed=0, progress=False, subtasks=list(RULER_WITHIN_REACH), samples=10)
    for name in RULER_WITHIN_REACH:
        assert results[2048]["subtasks"][name]["score"] >= 50.0, (name, results[2048]["subtasks"][name])


def test_ruler_is_in_no_default_grid():
    import inspect

    from ropekit import cli, compare

    assert "ruler" not in compare.DEFAULT_TASKS
    eval_tasks = inspect.signature(inspect.unwrap(cli.evaluate)).parameters["tasks"].default.default  # `ropekit eval`'s --tasks
    assert eval_tasks == "passkey,niah,ppl" and "ruler" not in eval_tasks
