"""The lab: tokenizer, generators, loss, row table, seed aggregation and claim verdicts (fast); the whole pipeline
on a tiny budget (fast); and ``--quick`` for real (slow): pre-training must retrieve and extension must work."""

import json
import random
from dataclasses import replace

import pytest
import torch

import ropekit
from ropekit.studies import lab
from ropekit.training.positions import STRATEGIES
from ropekit.registry import get_method
from ropekit.testing import tiny_model, tiny_tokenizer

TRAIN_TEXT = "the grass is green. the sky is blue! where are we? here we go.\nthere and back again. " * 40
EVAL_TEXT = "of man's first disobedience, and the fruit. of that forbidden tree? whose mortal taste.\n" * 40


@pytest.fixture
def small_texts(monkeypatch):
    """Short stand-ins for Shakespeare and Paradise Lost, so generators need no corpus."""
    tokenizer = lab.lab_tokenizer()
    texts = {split: torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.uint8)
             for split, text in (("train", TRAIN_TEXT), ("eval", EVAL_TEXT))}
    monkeypatch.setattr(lab.data, "_TEXT_CACHE", texts)  # patched where it lives
    return texts


def test_tokenizer_round_trip_and_save(tmp_path):
    tokenizer = lab.lab_tokenizer()
    text = "O Romeo, Romeo! wherefore art thou Romeo?\n[Exit] 'tis \"so\" (and) 42 <key>café"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(tokenizer) == len(lab.VOCABULARY) < 128
    assert tokenizer.decode(ids) == "o romeo, romeo! wherefore art thou romeo?\n[exit] 'tis \"so\" (and) 42 <key>cafe"
    assert ids[-5] == lab.KEY and ids.count(lab.KEY) == 1  # markers are one token, never split into characters
    assert [tokenizer.convert_ids_to_tokens(i) for i in lab.DIGIT_IDS] == list("0123456789")
    assert tokenizer("<Q>§", add_special_tokens=False).input_ids == [lab.KEY_IDS[16], lab.UNK]
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False).input_ids == ids
    lab.check_lab_tokenizer(again, "lab-passkey")
    with pytest.raises(ropekit.RopekitError, match="needs a model trained by `ropekit lab`"):
        lab.check_lab_tokenizer(tiny_tokenizer(), "lab-passkey")


def test_values_never_cross_between_training_and_evaluation():
    rng = random.Random(0)
    for split, parity in (("train", 0), ("eval", 1)):
        for _ in range(300):
            value = lab.draw_value(rng, rng.randint(1, 5), split)
            digits = [lab.DIGIT_IDS.index(v) for v in value]
            assert len(set(digits)) == len(digits) and sum(digits) % 2 == parity


def test_passkey_and_kv_sequences(small_texts):
    tokenizer = lab.lab_tokenizer()
    for length in (128, 512):
        s = lab.passkey_sequence(random.Random(1), length, "eval", depth=0.5, digits=5)
        ids = s["context"] + s["answer"]
        assert len(ids) == length and ids[0] == lab.BOS and s["context"][-2:] == [lab.QUERY, lab.ANSWER]
        assert ids[s["offset"]] == lab.KEY and ids[s["offset"] + 1 : s["offset"] + 6] == s["answer"]
        assert abs(s["offset"] / length - 0.5) < 0.1 and s["distance"] == len(s["context"]) - 1 - s["offset"]
        start = tokenizer.decode(ids[1:9])  # the filler is evaluation text, never training text
        assert start in EVAL_TEXT and start not in TRAIN_TEXT

        kv = lab.kv_sequence(random.Random(2), length, "eval", pairs=9, gold=3)
        ids = kv["context"] + kv["answer"]
        assert len(ids) == length and kv["depth"] == 0.375
        keys = [t for t in kv["context"][:-3] if t in lab.KEY_IDS]
        assert len(keys) == len(set(keys)) == 9
        asked = kv["context"][-2]
        where = kv["context"].index(asked)
        assert where == kv["offset"] and kv["context"][where + 1 : where + 1 + len(kv["answer"])] == kv["answer"]
        assert kv["distance"] == len(kv["context"]) - 1 - where


def test_training_rows_are_deterministic_and_mixed(small_texts):
    a, b = lab.LabSequences(64, 128, seed=0), lab.LabSequences(64, 128, seed=0)
    assert all(a[i].input_ids == b[i].input_ids and len(a[i]) == 128 for i in range(64))
    assert a[5].input_ids != lab.LabSequences(64, 128, seed=1)[5].input_ids
    kinds = [lab.KEY in a[i].input_ids or any(t in lab.KEY_IDS for t in a[i].input_ids) for i in range(64)]
    assert 0 < sum(kinds) < 64  # retrieval and plain-text rows
    questions = {a[i].input_ids.index(lab.ANSWER) for i in range(64) if lab.ANSWER in a[i].input_ids}
    assert len(questions) > 5 and max(questions) > 120 and min(questions) < 100  # questions at many positions
    assert any(a[i].input_ids.count(lab.BOS) == 2 for i in range(64))  # a shorter sequence, then text
    with pytest.raises(IndexError):
        a[64]
    # training sequences only ever hold training values
    for i in range(64):
        ids = a[i].input_ids
        if lab.ANSWER in ids:
            answer = ids[ids.index(lab.ANSWER) + 1:]
            answer = answer[:answer.index(lab.BOS)] if lab.BOS in answer else answer
            assert sum(lab.DIGIT_IDS.index(t) for t in answer) % 2 == 0


def test_answer_weighted_loss_matches_explicit_sum():
    torch.manual_seed(0)
    vocab = len(lab.VOCABULARY)
    # row 0: one sequence, answer 30 31; row 1: an answer (30) ended by the next <s>, then text; -100 is skipped
    labels = torch.tensor([[1, 40, 41, 5, 6, 30, 31], [1, 40, 6, 30, 1, 41, 42]])
    labels[1, 6] = -100
    logits = torch.randn(2, 7, vocab)
    loss = lab.answer_weighted_loss(0.5)(type("Out", (), {"logits": logits})(), labels)
    answer, other = [], []
    for b in range(2):
        inside = False
        for t in range(7):
            token = int(labels[b, t])
            is_answer = inside and token not in (lab.ANSWER, lab.BOS)
            inside = True if token == lab.ANSWER else False if token == lab.BOS else inside
            if t == 0 or token == -100:
                continue
            nll = torch.nn.functional.cross_entropy(logits[b, t - 1][None], labels[b, t][None])
            (answer if is_answer else other).append(nll)
    expected = torch.stack(answer).mean() + 0.5 * torch.stack(other).mean()
    assert len(answer) == 3 and torch.allclose(loss, expected, atol=1e-6)


def test_row_table_names_real_methods_and_strategies():
    labels = [r.label for r in lab.ROWS]
    assert len(labels) == len(set(labels))
    for row in lab.ROWS:
        get_method(row.method)
        assert row.strategy in STRATEGIES and row.arm in lab.ARMS
        assert (row.strategy == "contiguous") == (row.arm != "native")
    assert {"ft-control", "ft-eabf", "cream-pi", "pose-yarn", "self-extend", "randpos"} <= set(labels)
    with pytest.raises(ropekit.RopekitError, match="no row 'nope'"):
        lab.get_rows(["none", "nope"])


def _fake(scores):
    """A per-seed results dict with one row and pass-key scores per multiple of the native 128."""
    return {"format": 2, "kind": "lab", "tasks": {}, "lengths": [128, 512], "environment": {}, "seed": 0,
            "runs": [{"label": "a", "results": {"lab-passkey": {str(n): {"score": s, "n": 100} for n, s in scores.items()}}}],
            "lab": {"pretrain_seed": 0, "pretrained": "", "pretrain_summary": {}, "stages": {}, "seconds": 1.0, "cpu_seconds": 2.0,
                    "shape": {"native": 128}, "arms": {"a": "free"}}}


def test_combine_seeds_and_the_old_unpaired_compare():
    first, second = _fake({128: 100, 512: 40}), _fake({128: 90, 512: 60})
    second["lab"].update(pretrain_seed=1, eval_seed=2001, items="test")
    first["lab"].update(eval_seed=2000, items="test")
    combined = lab.combine([first, second])
    cell = combined["runs"][0]["results"]["lab-passkey"]["512"]
    assert cell["score"] == 50 and cell["seeds"] == [40, 60] and (cell["min"], cell["max"], cell["n"]) == (40, 60, 200)
    assert len(combined["lab"]["seeds"]) == 2 and combined["seconds"] == 2.0
    assert combined["lab"]["items"] == "test" and [s["eval_seed"] for s in combined["lab"]["seeds"]] == [2000, 2001]
    assert "eval_seed" not in combined["lab"]  # per seed only

    def results(a, b, n=100):
        run = lambda label, scores: {"label": label, "results": {"lab-passkey": {"512": {"score": sum(scores) / len(scores), "seeds": scores, "n": n * len(scores)}}}}  # noqa: E731
        return {"runs": [run("a", a), run("b", b)], "lab": {"shape": {"native": 128}}}

    assert lab.compare(results([95, 93, 97], [60, 70, 65]), "a", "b", "lab-passkey", 4)["verdict"] == "confirmed"
    assert lab.compare(results([60, 70, 65], [95, 93, 97]), "a", "b", "lab-passkey", 4)["verdict"] == "refuted"
    assert lab.compare(results([80, 84, 82], [81, 83, 80]), "a", "b", "lab-passkey", 4)["verdict"] == "not resolved"
    assert lab.compare(results([80, 84, 82], [81, 83, 80]), "a", "b", "lab-passkey", 4, strict=False)["verdict"] == "tie"
    assert lab.compare(results([90], [70], n=10), "a", "b", "lab-passkey", 4)["verdict"] == "not resolved"  # 10 items: noise


def test_tiny_lab_end_to_end_resumes(tmp_path, monkeypatch, small_texts):
    """The pipeline on a tiny budget: pre-training (cached), three arms and one row added by one line (its options
    reach the trainer), evaluation, report, claims; a second run retrains and re-evaluates nothing."""
    monkeypatch.setenv("ROPEKIT_CACHE", str(tmp_path / "cache"))
    import ropekit.training.trainer

    seen = []

    class RecordingTrainer(ropekit.training.trainer.RopekitTrainer):
        def __init__(self, *args, marker=None, **kwargs):
            seen.append(marker)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ropekit.training.trainer, "RopekitTrainer", RecordingTrainer)
    monkeypatch.setattr(lab.rows, "ROWS", (*lab.ROWS, lab.Row("pose-added", "linear", "native", strategy="pose", trainer={"marker": {"added"}})))
    text = tmp_path / "text.txt"
    text.write_text(EVAL_TEXT * 4)
    quick = lab.BUDGETS["quick"]
    budget = replace(quick, pretrain=replace(quick.pretrain, steps=3, warmup=1, batch=4), extend_steps=2, extend_tokens=256,
                     multiples=(1, 2, 4), curve_every=2, rows=("none", "ft-pi", "cream-yarn", "pose-added", "ft-control"),
                     tasks={"lab-passkey": {"trials": 2}, "lab-kv": {"trials": 1, "pairs": 3}, "ppl": {"windows": 1, "tail": 8, "source": str(text)}})
    monkeypatch.setitem(lab.BUDGETS, "quick", budget)
    shape = lab.Shape(native=32, hidden=32, layers=1, heads=2, intermediate=64)
    results = lab.lab(tmp_path / "out", quick=True, progress=False, shape=shape)
    assert [r["label"] for r in results["runs"]] == ["none", "ft-pi", "cream-yarn", "pose-added", "ft-control"]
    assert seen == [None, None, None, {"added"}, None]  # pre-training, ft-pi, cream-yarn, the added row with its option, ft-control
    assert (results["lab"]["items"], results["lab"]["seeds"][0]["eval_seed"]) == ("dev", 0)  # --quick scores the dev items
    control = [c for c in results["claims"] if c["group"] == "control"]  # paired on the seed's own per-item outcomes
    assert {(c["a"], c["metric"]) for c in control} == {(a, m) for a in ("ft-pi", "cream-yarn", "pose-added")
                                                        for m in ("pass key", "key–value", "perplexity")}
    assert all(c["length"] == 4 * 32 and c["verdict"] in ("confirmed", "refuted", "tie", "not decidable here") for c in control)
    assert control[0]["seeds"][0]["n"] == 2 and control[2]["unit"] == "nll" and control[2]["seeds"][0]["n"] == 1
    assert "| pose-added | trained at the native window |" in (tmp_path / "out" / "lab.md").read_text()
    assert results["runs"][1]["record"]["method"] == "linear" and results["runs"][2]["record"]["target_length"] == 4 * 32
    row = json.loads((tmp_path / "out" / "seed-0" / "runs" / "cream-yarn" / "lab_row.json").read_text())
    assert row["strategy"] == "cream" and row["schedule"]["batch"] == 256 // 32 and row["steps"] == 2
    tuned = json.loads((tmp_path / "out" / "seed-0" / "runs" / "ft-pi" / "lab_row.json").read_text())
    assert tuned["schedule"]["length"] == 128 and tuned["schedule"]["batch"] == 2  # the same tokens per step at 4×
    md = (tmp_path / "out" / "lab.md").read_text()
    assert "## Claims" in md and "| cream-yarn |" in md and (tmp_path / "out" / "report.html").exists()
    assert (tmp_path / "out" / "plots" / "lab-kv_by_position.png").exists()
    model, tokenizer = ropekit.load_model(lab.pretrained_dir(budget, shape, 0), device="cpu")
    assert tokenizer.convert_tokens_to_ids("<answer>") == lab.ANSWER and model.config.max_position_embeddings == 32
    weights = tmp_path / "out" / "seed-0" / "runs" / "ft-pi" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    lab.lab(tmp_path / "out", quick=True, progress=False, shape=shape)
    assert weights.stat().st_mtime_ns == stamp
    assert len(seen) == 5  # nothing retrained, the row whose options hold a set (written to JSON as a list) included
    with pytest.raises(ropekit.RopekitError, match="holds a 'quick' lab"):
        lab.lab(tmp_path / "out", quick=False, progress=False, shape=shape)
    with pytest.raises(ropekit.RopekitError, match="scored on dev items, not test ones"):
        lab.lab(tmp_path / "out", quick=True, items="test", progress=False, shape=shape)


def test_lab_tasks_refuse_other_tokenizers():
    with pytest.raises(ropekit.RopekitError, match="lab-kv needs a model trained by `ropekit lab`"):
        lab.run_lab_kv(tiny_model(), tiny_tokenizer(), [64], progress=False)


@pytest.mark.lab
def test_quick_lab_pretrains_a_retriever_that_extension_rescues(tmp_path, monkeypatch):
    """``ropekit lab --quick`` from an empty cache: the model must retrieve in its window, collapse at 4× without
    extension, and at least one method that never saw a 4×-long sequence must retrieve ≥ 80% at 4×."""
    monkeypatch.setattr(lab.rows, "pretrained_dir", lambda budget, shape, seed: tmp_path / "pretrained")  # a fresh pre-training
    results = lab.lab(tmp_path / "lab", quick=True, progress=False)
    passkey = {r["label"]: r["results"]["lab-passkey"] for r in results["runs"]}
    summary = {label: (cells["128"]["score"], cells["512"]["score"], cells["512"]["far"]) for label, cells in passkey.items()}
    assert passkey["none"]["128"]["score"] >= 80, summary  # pre-training produced a retriever
    assert passkey["none"]["512"]["far"] <= 10, summary  # unextended, it is lost beyond its window
    assert passkey["none"]["512"]["score"] <= 50, summary
    assert max(cells["512"]["score"] for label, cells in passkey.items() if label != "none") >= 80, summary  # extension works


def test_learning_curve_and_cost_survive_a_resume(tmp_path):
    """A pre-training interrupted after a checkpoint reports its whole learning curve and the cost up to that
    checkpoint plus the resumed run's; a fresh run (step 0) or a mismatched step starts from nothing."""
    from types import SimpleNamespace

    path = tmp_path / "progress.json"
    first = lab.LearningCurve(None, 128, every=500, path=path)
    first.rows = [{"step": 500, "cpu_seconds": 40.0, "passkey": 90.0, "kv": 50.0}]
    first.before = {"seconds": 100.0, "cpu_seconds": 60.0}  # as if already resumed once
    first.on_save(None, SimpleNamespace(global_step=500), None)
    saved = json.loads(path.read_text())
    assert saved["step"] == 500 and saved["rows"] == first.rows and saved["cost"]["cpu_seconds"] >= 60.0

    resumed = lab.LearningCurve(None, 128, every=500, path=path)
    resumed.on_train_begin(None, SimpleNamespace(global_step=500), None)
    assert resumed.rows == first.rows and resumed.before == saved["cost"]
    assert resumed.spent()["seconds"] >= saved["cost"]["seconds"]
    for step in (0, 1000):  # a fresh run, or a checkpoint the file does not describe
        other = lab.LearningCurve(None, 128, every=500, path=path)
        other.on_train_begin(None, SimpleNamespace(global_step=step), None)
        assert other.rows == [] and other.before == {"seconds": 0.0, "cpu_seconds": 0.0}


def test_cli_lists_rows_and_refuses_bad_input_in_one_line(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ropekit.cli import app

    monkeypatch.setattr(lab.rows, "ROWS", (*lab.ROWS, lab.Row("longlora-pi", "linear", "target", trainer={"s2": {"group_ratio": 0.25}})))
    runner = CliRunner()
    listed = runner.invoke(app, ["lab", "--list"])
    assert listed.exit_code == 0 and len(listed.output.splitlines()) == len(lab.rows.ROWS)
    assert "longlora-pi" in listed.output and "cream-yarn" in listed.output
    for args, message in ((["--seeds", "0,x"], "is not a list of integers"), (["--rows", "none,nope"], "no row 'nope'")):
        result = runner.invoke(app, ["lab", "--output", str(tmp_path / "out"), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written or trained


def test_longrecipe_and_longlora_rows_train_with_their_own_positions_and_attention(tmp_path, monkeypatch, small_texts):
    """The two rows issues 17 and 18 add to the lab table: `longrecipe-pi` trains on sentence-gapped position ids
    spanning the 4× target (lab rows all hold sentence ends), `longlora-pi` trains at 4× with S²-Attn open."""
    monkeypatch.setenv("ROPEKIT_CACHE", str(tmp_path / "cache"))
    import ropekit.training.trainer
    from ropekit.methods import s2_attention as longlora

    s2_calls, spans = [], []
    original_call, original_sample = longlora.S2Training.__call__, ropekit.training.trainer.sample

    def counting_call(self, *args, **kwargs):
        s2_calls.append(self.group_ratio)
        return original_call(self, *args, **kwargs)

    def recording_sample(name, doc, train_length, target_length, generator, **kwargs):
        ids, pos = original_sample(name, doc, train_length, target_length, generator, **kwargs)
        if name == "longrecipe":
            spans.append(int(pos[-1]))
        return ids, pos

    monkeypatch.setattr(longlora.S2Training, "__call__", counting_call)
    monkeypatch.setattr(ropekit.training.trainer, "sample", recording_sample)
    text = tmp_path / "text.txt"
    text.write_text(EVAL_TEXT * 4)
    quick = lab.BUDGETS["quick"]
    budget = replace(quick, pretrain=replace(quick.pretrain, steps=2, warmup=1, batch=4), extend_steps=2, extend_tokens=256,
                     multiples=(1, 2), curve_every=2, rows=("none", "longrecipe-pi", "longlora-pi"),
                     tasks={"lab-passkey": {"trials": 2}, "lab-kv": {"trials": 1, "pairs": 3}, "ppl": {"windows": 1, "tail": 8, "source": str(text)}})
    monkeypatch.setitem(lab.BUDGETS, "quick", budget)
    shape = lab.Shape(native=64, hidden=32, layers=1, heads=2, intermediate=64)
    results = lab.lab(tmp_path / "out", quick=True, progress=False, shape=shape)
    assert [r["label"] for r in results["runs"]] == ["none", "longrecipe-pi", "longlora-pi"]
    recipe = json.loads((tmp_path / "out" / "seed-0" / "runs" / "longrecipe-pi" / "lab_row.json").read_text())
    assert recipe["strategy"] == "longrecipe" and recipe["row"]["dataset"]["sentence_ends"] == sorted(lab.SENTENCE_END_IDS)
    assert spans and max(spans) == 4 * 64 - 1  # gapped ids reach the end of the 4× target
    assert s2_calls and set(s2_calls) == {0.25}  # S²-Attn ran in longlora-pi's training steps (and nowhere else)
    assert "| longrecipe-pi | trained at the native window |" in (tmp_path / "out" / "lab.md").read_text()
