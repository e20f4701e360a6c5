"""Evaluation building blocks: deterministic data, exact metrics on hand-made models, one-forward perplexity."""

import copy
import json
import math

import pytest
import torch

import ropekit
from ropekit.eval.passkey import make_passkey_sample, passkey_samples, run_passkey
from ropekit.corpus import text_tokens
from ropekit.eval.perplexity import run_perplexity, tail_nll
from ropekit.eval.scoring import score_answers
from ropekit.testing import NATIVE, random_ids, save_tiny_checkpoint, tiny_model, tiny_tokenizer

from conftest import rel_err


class OracleModel(torch.nn.Module):
    """Predicts the next token of whatever it was given ("perfect"), or always token 0 ("wrong")."""

    def __init__(self, perfect: bool, vocab: int = 300):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.perfect, self.vocab = perfect, vocab
        self.truth = None

    def forward(self, input_ids, logits_to_keep=0, use_cache=False, **_):
        logits = torch.full((*input_ids.shape, self.vocab), -10.0)
        if self.perfect:
            nxt = torch.roll(input_ids, -1, dims=1)
            logits.scatter_(2, nxt[..., None], 10.0)
        else:
            logits[..., 0] = 10.0
        return type("Out", (), {"logits": logits[:, -logits_to_keep:] if logits_to_keep else logits})()


def test_passkey_sample_is_exact_and_deterministic():
    tok = tiny_tokenizer()
    sample = make_passkey_sample(tok, 600, 0.5, "12345")
    assert len(sample.context) + len(sample.answer) == 600
    assert tok.decode(sample.answer) == "12345"
    text = tok.decode(sample.context)
    assert text.endswith("The pass key is ") and "The pass key is 12345." in text
    at = text.index("12345") / len(text)
    assert 0.4 < at < 0.6
    a = passkey_samples(tok, 700, 5, seed=3)
    b = passkey_samples(tok, 700, 5, seed=3)
    c = passkey_samples(tok, 700, 5, seed=4)
    assert [(s.key, s.depth, s.context) for s in a] == [(s.key, s.depth, s.context) for s in b]
    assert [s.key for s in a] != [s.key for s in c]
    with pytest.raises(ValueError, match="too short"):
        make_passkey_sample(tok, 50, 0.5, "12345")


def test_scoring_perfect_and_wrong_models():
    tok = tiny_tokenizer()
    samples = [(s.context, s.answer) for s in passkey_samples(tok, 400, 4, seed=0)]
    assert all(r.correct for r in score_answers(OracleModel(True), samples, batch_size=3))
    wrong = score_answers(OracleModel(False), samples)
    assert not any(r.correct for r in wrong) and all(r.answer_nll > 5 for r in wrong)
    result = run_passkey(OracleModel(True), tok, [400, 500], trials=3, progress=False)
    assert result["lengths"]["400"]["accuracy"] == 100.0 and len(result["lengths"]["500"]["trials"]) == 3


def test_batched_scoring_equals_unbatched():
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    samples = [(s.context, s.answer) for s in passkey_samples(tok, 300, 3, seed=1)]
    one = score_answers(model, samples, batch_size=1)
    three = score_answers(model, samples, batch_size=3)
    assert [r.predicted for r in one] == [r.predicted for r in three]
    assert [r.answer_nll for r in one] == pytest.approx([r.answer_nll for r in three], rel=1e-5)


def direct_tail_nll(model, ids, tail):
    ropekit.extension.reset_rope_state(model)  # a fresh model for every window, as if nothing ran before
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.nn.functional.cross_entropy(logits[-tail - 1 : -1], torch.tensor(ids[-tail:]), reduction="mean").item()


@pytest.mark.parametrize("method", ["none", "eabf", "dynamic"])
def test_one_forward_perplexity_equals_separate_windows(tmp_path, method):
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    if method != "none":
        ropekit.extend(model, method, target_length=4 * NATIVE)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i % 97}" for i in range(400)))
    result = run_perplexity(model, tok, [100, 250], windows=2, tail=32, source=str(text), progress=False)
    assert result["one_forward"] == (method != "dynamic")
    ids = text_tokens(tok, str(text))
    for length in (100, 250):
        offsets = [w["offset"] for w in result["lengths"][str(length)]["windows"]]
        want = sum(direct_tail_nll(model, ids[o:o + length], 32) for o in offsets) / len(offsets)
        assert result["lengths"][str(length)]["nll"] == pytest.approx(want, rel=1e-5)
        assert result["lengths"][str(length)]["ppl"] == pytest.approx(math.exp(want), rel=1e-5)


def test_tail_nll_of_a_known_distribution():
    """A model whose logits are all equal has NLL ln(V) per token."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()
    out = tail_nll(model, random_ids(80)[0].tolist(), [40, 80], tail=16)
    for end in (40, 80):
        total, n = out[end]
        assert n == 16 and total / n == pytest.approx(math.log(model.config.vocab_size), rel=1e-6)


def test_compare_end_to_end_on_a_tiny_checkpoint(tmp_path):
    tok = tiny_tokenizer()
    save_tiny_checkpoint(tmp_path / "model", vocab_size=len(tok))
    text = tmp_path / "text.txt"
    text.write_text("Of Mans First Disobedience, and the Fruit of that Forbidden Tree. " * 40)
    from ropekit.studies.compare import compare, summary_rows

    tasks = {"passkey": {"trials": 2}, "ppl": {"windows": 1, "tail": 64, "source": str(text)}}
    results = compare(model=str(tmp_path / "model"), methods=["none", "yarn", "eabf"], target_length=512, lengths=[300, 400],
                      tasks=tasks, output=tmp_path / "out", device="cpu", progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in saved["runs"]] == ["none", "yarn", "eabf"]
    assert saved["runs"][1]["record"]["method"] == "yarn" and saved["runs"][0]["record"] is None
    header, rows = summary_rows(saved)
    assert header == ["run", "passkey 300", "passkey 400", "ppl 300", "ppl 400"] and len(rows) == 3
    assert results["runs"][2]["results"]["passkey"]["300"]["n"] == 2


def test_compare_rejects_bad_input_before_loading(tmp_path):
    from ropekit.studies.compare import compare

    with pytest.raises(ropekit.RopekitError, match="unknown method"):
        compare(model="/does/not/matter", methods=["none", "warp"], output=tmp_path)
    with pytest.raises(ropekit.RopekitError, match="unknown task"):
        compare(model="/does/not/matter", tasks={"passkey": {}, "vibes": {}}, output=tmp_path)
    with pytest.raises(ropekit.RopekitError, match="belongs to none"):
        compare(model="/does/not/matter", methods=["none", "yarn"], params={"theta": 1e6}, output=tmp_path)
    with pytest.raises(ropekit.RopekitError, match="no such model"):
        compare(model="/does/not/exist", methods=["none"], output=tmp_path)


def test_task_lengths_and_a_deadline_skip_only_steps_that_cannot_finish(tmp_path):
    import time

    from ropekit.eval.runner import RunSpec, evaluate

    save_tiny_checkpoint(tmp_path / "model", vocab_size=len(tiny_tokenizer()))
    text = tmp_path / "text.txt"
    text.write_text("Of Mans First Disobedience, and the Fruit of that Forbidden Tree. " * 40)
    tasks = {"passkey": {"trials": 2}, "ppl": {"windows": 1, "tail": 32, "source": str(text)}}
    runs = [RunSpec(str(tmp_path / "model"), label="m")]
    # no deadline: every step; perplexity also at the shorter length it was given
    full = evaluate(runs, tasks, [300, 400], tmp_path / "full", device="cpu", progress=False, task_lengths={"ppl": [200, 300, 400]})
    assert full["lengths"] == [200, 300, 400] and "skipped" not in full
    assert list(full["runs"][0]["results"]["ppl"]) == ["200", "300", "400"] and list(full["runs"][0]["results"]["passkey"]) == ["300", "400"]
    assert full["tasks"]["ppl"]["lengths"] == [200, 300, 400] and full["tasks"]["passkey"]["version"] == 1
    # a deadline already passed: the first step of each task runs (nothing measured yet to say it cannot finish),
    # every later step is estimated from it and skipped; what ran equals the run without a deadline
    cut = evaluate(runs, tasks, [300, 400], tmp_path / "cut", device="cpu", progress=False, task_lengths={"ppl": [200, 300, 400]},
                   stop_at=time.time())
    assert [(s["task"], s["length"]) for s in cut["skipped"]] == [("passkey", 400)]
    assert list(cut["runs"][0]["results"]["passkey"]) == ["300"]
    assert cut["runs"][0]["results"]["passkey"]["300"] == full["runs"][0]["results"]["passkey"]["300"]
    assert cut["runs"][0]["results"]["ppl"] == full["runs"][0]["results"]["ppl"]  # one forward serves all lengths: one step
    saved = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert saved["skipped"] == cut["skipped"]
    with pytest.raises(ropekit.RopekitError, match="lengths given for task 'niah'"):
        evaluate(runs, tasks, [300], tmp_path / "bad", device="cpu", progress=False, task_lengths={"niah": [100]})
