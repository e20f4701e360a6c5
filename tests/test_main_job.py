"""The main job's building blocks: passkey + perplexity from one forward, shared-prefix scoring, the machine record,
per-entry method parameters and the CLI's --trials/--windows."""

import json
import random

import pytest
import torch

import ropekit
from ropekit.eval.passkey_ppl import run_passkey_ppl, window_sample
from ropekit.eval.scoring import score_after_prefix, score_answers
from ropekit.corpus import text_tokens
from ropekit.testing import NATIVE, save_tiny_checkpoint, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def verse(tmp_path_factory):
    path = tmp_path_factory.mktemp("verse") / "verse.txt"
    rng = random.Random(0)
    words = ["morn", "light", "shade", "fire", "stream", "hill", "vale", "star", "wing", "deep"]
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(7)) + "," for _ in range(900)))
    return str(path)


def test_window_sample_is_exact_with_the_needle_before_the_scored_tail(verse):
    from ropekit.eval.passkey import INTRO, QUESTION

    tok = tiny_tokenizer()
    tokens = text_tokens(tok, verse)
    encode = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
    needle = encode("The pass key is 48213. Remember it. 48213 is the pass key.\n")
    for depth in (0.0, 0.5, 0.999):
        s = window_sample(tok, tokens, 1500, offset=40, depth=depth, key="48213", tail=200)
        ids = s["ids"]
        assert len(ids) == 1500 and tok.decode(ids).endswith(QUESTION + "48213")
        at = s["needle_at"]
        assert ids[at:at + len(needle)] == needle and ids[at - 1] == encode("\n")[0]  # the needle starts a line
        start, end = s["tail"]
        assert at + len(needle) <= start and end == 1500 - len(encode(QUESTION)) - len(encode("48213"))
        natural = end - len(encode(INTRO)) - len(needle)
        text = tokens[40:40 + natural]
        assert ids[:len(encode(INTRO))] == encode(INTRO)
        assert ids[len(encode(INTRO)):at] + ids[at + len(needle):end] == text  # the window's text, unchanged around the needle
        assert ids[start:end] == text[-200:]  # the scored tail: the last 200 text tokens before the question
    with pytest.raises(ropekit.RopekitError, match="too short"):
        window_sample(tok, tokens, 300, 0, 0.5, "12345", tail=200)


def direct_scores(model, sample):
    """The plain way: full logits of one forward, then the tail's NLL and the answer's argmax."""
    ids = torch.tensor([sample["ids"]])
    ropekit.extension.reset_rope_state(model)  # dynamic NTK: this length's own frequencies
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    start, end = sample["tail"]
    nll = torch.nn.functional.cross_entropy(logits[start - 1:end - 1], ids[0, start:end], reduction="sum").item()
    n = sample["answer"]
    predicted = logits[-n - 1:-1].argmax(-1)
    return nll, bool((predicted == ids[0, -n:]).all()), predicted.tolist()


@pytest.mark.parametrize("method", ["none", "eabf", "dynamic"])
def test_passkey_ppl_equals_a_plain_forward(verse, method):
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    if method != "none":
        ropekit.extend(model, method, target_length=8 * NATIVE)
    results = run_passkey_ppl(model, tok, [500, 700], seed=3, progress=False, trials=2, tail=64, source=verse)
    tokens = text_tokens(tok, verse)
    for length in (500, 700):
        rng = random.Random(f"passkey_ppl-3-{length}")
        total = 0.0
        for trial, row in enumerate(results[length]["trials"]):
            depth, key = rng.random(), str(rng.randint(10000, 99999))
            assert key == row["key"]
            sample = window_sample(tok, tokens, length, row["offset"], depth, key, 64)
            nll, correct, predicted = direct_scores(model, sample)
            total += nll
            assert correct == row["correct"] and tok.decode(predicted) == row["predicted"]
            assert row["tail_nll"] == pytest.approx(nll / 64, rel=1e-4)
        assert results[length]["nll"] == pytest.approx(total / 128, rel=1e-5)
        assert results[length]["n"] == 2 and len({r["offset"] for r in results[length]["trials"]}) == 2  # two windows


def test_shared_prefix_scoring_equals_full_forwards():
    tok = tiny_tokenizer()
    prefix = tok("records: " + " ".join(f"k{i}={i * 7 % 100}" for i in range(60))).input_ids
    continuations = [(tok(f"\nk{i}=").input_ids, tok(str(i * 7 % 100)).input_ids) for i in (3, 30, 59)]
    for method in ("none", "eabf", "dynamic"):
        model = tiny_model("llama", vocab_size=len(tok))
        if method != "none":
            ropekit.extend(model, method, target_length=8 * NATIVE)
        shared = score_after_prefix(model, prefix, continuations)
        full = score_answers(model, [(prefix + q, a) for q, a in continuations])
        assert [r.predicted for r in shared] == [r.predicted for r in full]
        assert [r.answer_nll for r in shared] == pytest.approx([r.answer_nll for r in full], rel=1e-4)


def test_machine_record():
    from ropekit.machine import describe_machine, machine

    facts = machine("cpu", seconds=0.05)
    assert facts["cores"] >= 1 and facts["fp32_gflops"] > 0 and facts["cpu"]
    assert "GFLOP/s" in describe_machine(facts)


def test_compare_records_machine_setup_and_per_entry_parameters(tmp_path, verse):
    tok = tiny_tokenizer()
    save_tiny_checkpoint(tmp_path / "model", vocab_size=len(tok))
    from ropekit.studies.compare import compare, summary_rows, timing_lines

    tasks = {"passkey_ppl": {"trials": 1, "tail": 64, "source": verse}}
    results = compare(model=str(tmp_path / "model"), methods=["none", "eabf", "eabf:layers=all"], target_length=1024,
                      lengths=[500, 700], tasks=tasks, output=tmp_path / "out", device="cpu", progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in saved["runs"]] == ["none", "eabf", "eabf:layers=all"]
    assert saved["runs"][1]["record"]["attention"]["logit_scale"]["layers"] == [2, 3]
    assert saved["runs"][2]["record"]["attention"]["logit_scale"]["layers"] == [0, 1, 2, 3]
    assert saved["environment"]["machine"]["fp32_gflops"] > 0 and "setup_seconds" in saved
    header, rows = summary_rows(saved)
    assert header == ["run", "passkey 500", "passkey 700", "ppl 500", "ppl 700"] and len(rows) == 3
    assert all(float(cell) > 1 for cell in rows[0][3:])  # perplexities
    lines = timing_lines(results)
    assert lines[0].startswith("machine: ") and lines[1].startswith("job: ")
    with pytest.raises(ropekit.RopekitError, match="not key=value"):
        compare(model=str(tmp_path / "model"), methods=["eabf:layers"], output=tmp_path / "bad")
    with pytest.raises(ropekit.RopekitError, match="unknown method"):
        compare(model=str(tmp_path / "model"), methods=["warp:x=1"], output=tmp_path / "bad")


def test_cli_trials_and_windows_fill_every_task(tmp_path):
    from ropekit.cli import _tasks

    chosen = _tasks("passkey,niah,lines,kv,ruler,ppl,entropy,passkey_ppl", ["niah.trials=5"], trials=3, windows=2)
    assert chosen["passkey"]["trials"] == 3 and chosen["niah"]["trials"] == 5  # an explicit --task-option wins
    assert chosen["lines"]["trials"] == chosen["kv"]["trials"] == chosen["passkey_ppl"]["trials"] == 3
    assert chosen["ruler"]["samples"] == 3 and chosen["ppl"]["windows"] == 2 and chosen["entropy"]["documents"] == 2
    assert _tasks("passkey", None) == {"passkey": {}}  # eval without --trials: the task's own default


def test_conclusions_say_what_the_pass_key_shows():
    from ropekit.studies.compare import DEFAULT_TASKS, TRAIN_EABF, conclusions

    assert list(DEFAULT_TASKS) == ["passkey_ppl"]  # the main job: one forward per method and length

    def run(label, method, scores):
        return {"label": label, "method": method, "native_length": 8192,
                "results": {"passkey_ppl": {str(n): {"score": s} for n, s in scores.items()}}}

    results = {"lengths": [4096, 12288], "tasks": {"passkey_ppl": {}},
               "runs": [run("none", None, {4096: 100.0, 12288: 0.0}), run("yarn", "yarn", {4096: 100.0, 12288: 100.0}),
                        run("eabf", "eabf", {4096: 100.0, 12288: 0.0}), run("ckpt", None, {4096: 100.0, 12288: 0.0})]}
    lines = conclusions(results)
    assert lines[0] == "none: does not retrieve the pass key beyond its 8K window (12K)"
    assert lines[1] == "yarn: retrieves the pass key beyond its 8K window (12K)"
    assert lines[2].startswith("eabf: does not retrieve") and lines[2].endswith(TRAIN_EABF)
    assert "train" not in lines[3]  # a checkpoint evaluated as loaded is not called untrained
