"""The lab's binding task (issue 30): key–value retrieval among near-miss keys with numbers in the haystack — the
generator's leakage rules and structure, its place in the training mixture (off unless switched on), the
``lab-bind`` task's schema on a tiny untrained lab model, and its place in the claims and ``lab.md`` (fast)."""

import random
from dataclasses import replace

import pytest
import torch

import ropekit
from ropekit.eval.tasks import evenly_spaced, get_task
from ropekit.studies import lab
from ropekit.studies.lab import data, rows, tasks

TRAIN_TEXT = "the grass is green. the sky is blue! where are we? here we go.\nthere and back again. " * 40
EVAL_TEXT = "of man's first disobedience, and the fruit. of that forbidden tree? whose mortal taste.\n" * 40


@pytest.fixture
def small_texts(monkeypatch):
    """Short stand-ins for Shakespeare and Paradise Lost, so the generators need no corpus."""
    tokenizer = data.lab_tokenizer()
    texts = {split: torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.uint8)
             for split, text in (("train", TRAIN_TEXT), ("eval", EVAL_TEXT))}
    monkeypatch.setattr(data, "_TEXT_CACHE", texts)
    return texts


def digit_sum(tokens):
    return sum(data.DIGIT_IDS.index(t) for t in tokens)


def pair_spans(s):
    """Where each slot's key and value sit in the context, found by their exact token run (keys occur once)."""
    context, spans = s["context"], []
    for key, value in zip(s["keys"], s["values"]):
        run = [*key, *value]
        starts = [i for i in range(len(context) - len(run)) if context[i:i + len(run)] == run]
        assert len(starts) == 1
        spans.append((starts[0], starts[0] + len(run)))
    return spans


@pytest.mark.parametrize("split,parity,filler", [("train", 0, "phrase"), ("eval", 1, "phrase"), ("eval", 1, "text")])
def test_bind_sequence_keeps_the_leakage_rules_and_its_structure(small_texts, split, parity, filler):
    tokenizer = data.lab_tokenizer()
    for length, density in ((128, 0.05), (512, 0.1), (512, 0.0)):
        for t in range(20):
            s = data.bind_sequence(random.Random(f"t-{t}"), length, split, pairs=8, near=4, gold=t % 8, density=density, filler=filler)
            context, answer = s["context"], s["answer"]
            assert len(context + answer) == length and context[0] == data.BOS
            asked = tuple(context[-3:-1])
            assert context[-4] == data.QUERY and context[-1] == data.ANSWER and asked == s["keys"][s["gold"]]
            # values: the split's parity, distinct digits, distinct between pairs; the asked pair's value is the answer
            assert all(digit_sum(v) % 2 == parity and len(set(v)) == len(v) for v in s["values"])
            assert len({tuple(v) for v in s["values"]}) == 8 and answer == s["values"][s["gold"]]
            # exactly one key matches; near misses share all but one symbol in place, or hold the same symbols in
            # another order; the other keys share no symbol with the asked one
            assert sum(k == asked for k in s["keys"]) == 1 and s["kinds"].count("gold") == 1 and s["kinds"][s["gold"]] == "gold"
            assert s["kinds"].count("near") == 4 and len(set(s["keys"])) == 8
            for key, kind in zip(s["keys"], s["kinds"]):
                same = sum(a == b for a, b in zip(key, asked))
                if kind == "near":
                    assert key != asked and (same == 1 or sorted(key) == sorted(asked))
                elif kind == "other":
                    assert not set(key) & set(asked)
            orders = [k for k, kind in zip(s["keys"], s["kinds"]) if kind == "near" and sorted(k) == sorted(asked)]
            assert len(orders) == 1  # the kinds take turns: position 0, position 1, the order, position 0
            # slots at evenly spaced depths; offset and distance as for key–value
            spans = pair_spans(s)
            assert spans == sorted(spans) and s["depth"] == evenly_spaced(8)[s["gold"]]
            assert spans[s["gold"]][0] == s["offset"] and s["distance"] == len(context) - 1 - s["offset"]
            # the haystack: exactly the requested share of digits, each number of the split's parity, never glued to
            # a pair, and the filler from the split's own text
            inside = {i for a, b in spans for i in range(a, b)}
            hay = [(i, x) for i, x in enumerate(context[1:-4], start=1) if i not in inside]
            assert s["hay_digits"] == round(density * len(hay)) == sum(x in data.DIGIT_IDS for _, x in hay)
            for a, b in spans:
                assert context[b] not in data.DIGIT_IDS and context[a - 1] not in data.DIGIT_IDS
            numbers = tokenizer.decode([x for _, x in hay]).split()
            assert all(sum(map(int, w)) % 2 == parity for w in numbers if w.isdigit())
            words = "".join(c for c in tokenizer.decode([x for _, x in hay]) if not c.isdigit()).split()
            own, other = (TRAIN_TEXT, EVAL_TEXT) if split == "train" else (EVAL_TEXT, TRAIN_TEXT)
            longest = max(words, key=len)
            assert longest in own and (longest not in other or len(longest) < 4)


def test_bind_sequence_options_and_refusals(small_texts):
    s = data.bind_sequence(random.Random(0), 256, "eval", pairs=6, near=5, symbols=3, min_digits=2, max_digits=3)
    asked = s["keys"][s["gold"]]
    assert len(asked) == 3 and s["context"][-5:-1] == [data.QUERY, *asked][-4:] and all(2 <= len(v) <= 3 for v in s["values"])
    assert all(k != asked and (sum(a == b for a, b in zip(k, asked)) == 2 or sorted(k) == sorted(asked))
               for k, kind in zip(s["keys"], s["kinds"]) if kind == "near")
    plain = data.bind_sequence(random.Random(0), 128, "eval", pairs=4, near=0, symbols=1, density=0.0)  # key–value's shape
    assert plain["hay_digits"] == 0 and all(len(k) == 1 for k in plain["keys"])
    for kwargs, message in (({"near": 2, "symbols": 1}, "near misses"), ({"near": 8}, "near misses"),
                            ({"density": 1.5}, "density"), ({"filler": "poem"}, "filler"), ({"min_digits": 3, "max_digits": 2}, "digits"),
                            ({"pairs": 30, "near": 2}, "do not fit")):
        with pytest.raises(ropekit.RopekitError, match=message):
            data.bind_sequence(random.Random(0), 128, "eval", **{"pairs": 8, "near": 4, **kwargs})


def test_binding_rows_are_off_by_default_and_on_with_their_mix(small_texts):
    default, off = data.LabSequences(64, 128, seed=0), data.LabSequences(64, 128, seed=0, mix=replace(data.Mix(), bind_pairs=(5, 6)))
    assert all(default.sequence(i) == off.sequence(i) for i in range(64))  # binding fields change no row while bind = 0
    assert not any(k.startswith("bind") for k in data.Mix().identity()) and "bind" in data.BIND_MIX.identity()
    on = data.LabSequences(200, 128, seed=0, mix=data.BIND_MIX)
    two_symbol = 0
    for i in range(200):
        ids = on[i].input_ids
        assert len(ids) == 128 and ids == on.sequence(i)
        if data.ANSWER in ids:
            answer = ids[ids.index(data.ANSWER) + 1:]
            answer = answer[:answer.index(data.BOS)] if data.BOS in answer else answer
            assert digit_sum(answer) % 2 == 0  # training answers only ever have an even digit sum
            question = ids[ids.index(data.QUERY) + 1:ids.index(data.ANSWER)]
            two_symbol += len(question) == 2
    assert 40 < two_symbol < 120  # about 40% of the rows are binding rows


def test_with_bind_is_the_switch_and_the_default_budget_binds():
    quick = rows.BUDGETS["quick"]
    bound = rows.with_bind(quick)
    assert bound.name == "quick-bind" and bound.pretrain.mix == data.BIND_MIX and bound.extend_schedule(512).mix == data.BIND_MIX
    assert bound.tasks["lab-bind"] == rows.BIND_TASK and {k: v for k, v in bound.tasks.items() if k != "lab-bind"} == quick.tasks
    assert "lab-bind" not in quick.tasks and quick.pretrain.mix.bind == 0  # the smoke run stays the 2-layer model without binding
    assert rows.pretrained_dir(bound, lab.Shape(), 0) != rows.pretrained_dir(quick, lab.Shape(), 0)
    assert rows.with_bind(quick, task={"trials": 2}).tasks["lab-bind"] == {"trials": 2}
    default = rows.BUDGETS["default"]  # the committed table: binding (the main task) on the 4-layer model, 3 seeds, test items
    assert default.name == "default" and default.pretrain.mix == data.BIND_MIX and default.tasks["lab-bind"] == rows.BIND_TASK
    assert default.shape.layers >= 4 and default.seeds == (0, 1, 2) and default.items == "test"


def test_lab_bind_task_schema_determinism_and_seeds(small_texts):
    shape = lab.Shape(native=32, hidden=32, layers=1, heads=2, intermediate=64)
    model, tokenizer = lab.lab_model(shape, 0).eval(), data.lab_tokenizer()
    task = get_task("lab-bind")
    assert task.run is tasks.run_lab_bind and task.options["pairs"] == 8 and task.higher_is_better
    options = {"pairs": 3, "near": 2, "max_digits": 2, "trials": 2, "batch_size": 4}
    first = tasks.run_lab_bind(model, tokenizer, [32, 64], seed=0, progress=False, **options)
    assert list(first) == [32, 64]
    for length, cell in first.items():
        assert {"score", "n", "positions", "middle_third", "middle_n", "far", "far_n", "lured", "samples"} <= set(cell)
        assert cell["n"] == len(cell["samples"]) == 6 and list(cell["positions"]) == [str(d) for d in evenly_spaced(3)]
        assert cell["middle_n"] == 2 and cell["far_n"] == sum(s["distance"] >= 32 for s in cell["samples"])
        assert [s["gold"] for s in cell["samples"]] == [0, 0, 1, 1, 2, 2]  # slot-major: claims pair items by order
        for s in cell["samples"]:
            assert isinstance(s["correct"], bool) and isinstance(s["lured"], bool) and not (s["correct"] and s["lured"])
            assert {"value", "predicted", "offset", "distance", "depth", "answer_nll"} <= set(s)
            assert not {"context", "answer", "keys", "values", "kinds"} & set(s)  # results.json keeps no sequences
            assert sum(map(int, s["value"])) % 2 == 1  # evaluation values
    assert first[64]["far_n"] > 0 and first[32]["far_n"] == 0
    again = tasks.run_lab_bind(model, tokenizer, [32, 64], seed=0, progress=False, **options)
    assert again == first
    other = tasks.run_lab_bind(model, tokenizer, [64], seed=2001, progress=False, **options)[64]["samples"]
    assert [(s["value"], s["offset"]) for s in other] != [(s["value"], s["offset"]) for s in first[64]["samples"]]
    with pytest.raises(ropekit.RopekitError, match="lab-bind needs a model trained by `ropekit lab`"):
        from ropekit.testing import tiny_model, tiny_tokenizer

        tasks.run_lab_bind(tiny_model(), tiny_tokenizer(), [64], progress=False)


def fake_seed(bind: dict | None, seed: int = 0) -> dict:
    """One pre-training seed's results for four rows at 1× and 4× (native 128): pass key, key–value and, when
    ``bind`` gives each row's correct items of 24 at 4×, lab-bind."""
    arms = {"none": "free", "ft-control": "target", "pose-pi": "native", "cream-pi": "native"}
    depths = evenly_spaced(3)

    def cell(correct, n, salt):
        flags = [i < correct for i in range(n)]
        random.Random(salt).shuffle(flags)
        samples = [{"correct": f, "value": str(i), "offset": i, "distance": 200, "depth": depths[i % 3]} for i, f in enumerate(flags)]
        middle = [s["correct"] for s in samples if lab.middle_third(s["depth"])]
        return {"score": 100 * correct / n, "n": n, "samples": samples, "far": 100 * correct / n, "far_n": n,
                "positions": {str(d): 50.0 for d in depths}, "middle_third": 100 * sum(middle) / len(middle), "middle_n": len(middle)}

    names = ("lab-passkey", "lab-kv", *(("lab-bind",) if bind else ()))
    runs = [{"label": label, "results": {t: {str(m * 128): cell(24 if m == 1 else (bind or {}).get(label, 12) if t == "lab-bind" else 20,
                                                               24, f"{label}-{t}-{m}-{seed}") for m in (1, 4)} for t in names}}
            for label in arms]
    return {"format": 2, "kind": "lab", "seed": 2000 + seed, "lengths": [128, 512], "tasks": {t: {} for t in names}, "runs": runs,
            "environment": {"device": "CPU", "torch": "2", "transformers": "5", "ropekit": "0", "command": "ropekit lab"},
            "lab": {"budget": {"name": "default-bind", "factor": 4, "multiples": [1, 4]}, "shape": {"native": 128, "layers": 2},
                    "pretrain_seed": seed, "eval_seed": 2000 + seed, "items": "test", "pretrained": "", "seconds": 1.0, "cpu_seconds": 1.0,
                    "stages": {"pretrain": {"seconds": 1, "cpu_seconds": 1}, "extend": {}, "evaluate": {"seconds": 1, "cpu_seconds": 1}},
                    "pretrain_summary": {"parameters": 1000, "learning_curve": []}, "arms": arms, "configured": {}}}


def test_claims_and_lab_md_use_binding_only_where_it_was_evaluated():
    without = lab.claim_checks([fake_seed(None, s) for s in (0, 1)])
    assert not any(c.get("task") == "lab-bind" or "binding" in c["claim"] for c in without)
    per_seed = [fake_seed({"pose-pi": 24, "cream-pi": 10}, s) for s in (0, 1)]
    checks = lab.claim_checks(per_seed)
    bound = [c for c in checks if c.get("task") == "lab-bind"]
    assert {c["metric"] for c in bound} == {"binding", "binding, middle third"} and all(c["length"] == 512 for c in bound)
    middle = next(c for c in bound if c["key"] == "cream>=pose" and c["metric"] == "binding, middle third")
    assert middle["subset"] == "middle_third" and middle["pooled"]["n"] == 2 * 8
    ceiling = next(c for c in checks if c["group"] == "lab" and "off the ceiling" in c["claim"])
    assert ceiling["verdict"] == "partly" and "pose-pi lab-bind @4× = 100.0" in ceiling["evidence"]  # one row at 100%
    window = next(c for c in checks if c["group"] == "lab" and "in its window" in c["claim"])
    assert "binding ≥ 90%" in window["claim"] and "none lab-bind @1×" in window["evidence"]
    md = lab.lab_markdown(lab.combine(per_seed), checks)
    table = md.split("## Binding")[1].split("\n## ")[0]
    assert "| pose-pi | trained at the native window | 100 (100–100) | 100 (100–100) |" in table
    assert "Middle third (gold pair at depth 1/3–2/3):" in table and "Beyond the window" in table
    assert "| cream-pi ≥ pose-pi | binding, middle third |" in md
