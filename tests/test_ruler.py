"""RULER synthetic tasks: deterministic generators, exact lengths, references really in the context, RULER's metric."""

import re
from collections import Counter

import pytest
import torch

from ropekit.errors import RopekitError
from ropekit.eval import ruler
from ropekit.eval.ruler import SUBTASKS, _run, evaluate_samples, ruler_samples, string_match_all
from ropekit.eval.tasks import TASKS
from ropekit.testing import tiny_model, tiny_tokenizer

LENGTH = 2000  # above every subtask's minimum with the byte-level tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def haystack(tmp_path_factory):
    path = tmp_path_factory.mktemp("ruler") / "filler.txt"
    lines = [f"Line {i}: the quick brown fox jumps over the lazy dog. It was a fine day in the valley!" for i in range(2000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


class OracleModel(torch.nn.Module):
    """Puts the argmax on the next input token: every teacher-forced answer is "retrieved"."""

    def __init__(self, vocab: int = 300):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.vocab = vocab

    def forward(self, input_ids, logits_to_keep=0, use_cache=False, **_):
        logits = torch.full((*input_ids.shape, self.vocab), -10.0)
        logits.scatter_(2, torch.roll(input_ids, -1, dims=1)[..., None], 10.0)
        return type("Out", (), {"logits": logits[:, -logits_to_keep:] if logits_to_keep else logits})()


def _key(samples):
    return [(s.context, s.answer, s.references, s.depths) for s in samples]


@pytest.mark.parametrize("subtask", SUBTASKS)
@pytest.mark.parametrize("source", ["file", "noise"])
def test_deterministic_under_seed_and_exact_length(tok, haystack, subtask, source):
    source = haystack if source == "file" else "noise"
    a = ruler_samples(tok, subtask, LENGTH, 3, seed=1, haystack=source)
    b = ruler_samples(tok, subtask, LENGTH, 3, seed=1, haystack=source)
    c = ruler_samples(tok, subtask, LENGTH, 3, seed=2, haystack=source)
    assert _key(a) == _key(b)
    assert [s.references for s in a] != [s.references for s in c] and [s.context for s in a] != [s.context for s in c]
    assert len({tuple(s.context) for s in a}) == 3  # samples differ within a seed too
    for s in a:
        if subtask in ruler.TEACHER_FORCED:
            assert s.max_new_tokens == 0 and len(s.context) + len(s.answer) == LENGTH
            assert tok.decode(s.answer) == s.references[0]
        else:
            assert not s.answer and s.max_new_tokens == ruler.TOKENS_TO_GENERATE[subtask]
            assert len(s.context) + s.max_new_tokens == LENGTH
    # an explicit generation budget still gives exact lengths
    for s in ruler_samples(tok, subtask, LENGTH + 37, 2, seed=0, haystack=source, max_new_tokens=9):
        assert len(s.context) + (len(s.answer) if s.answer else 9) == LENGTH + 37


@pytest.mark.parametrize("source", ["file", "noise"])
def test_niah_needles_are_in_the_context(tok, haystack, source):
    source = haystack if source == "file" else "noise"
    for subtask, (keys, values, queries) in ruler.NIAH.items():
        for s in ruler_samples(tok, subtask, LENGTH, 3, seed=0, haystack=source):
            text = tok.decode(s.context)
            needles = re.findall(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.", text)
            assert len(needles) == keys * values and len({k for k, _ in needles}) == keys
            assert len(s.references) == queries * values and len(s.depths) == queries * values
            question = text[text.rindex("\n"):]  # the question and answer prefix
            asked = [k for k in dict.fromkeys(k for k, _ in needles) if k in question]
            assert len(asked) == queries
            assert sorted(s.references) == sorted(v for k, v in needles if k in asked)
            if queries * values == 1:
                assert question.startswith("\nWhat is the special magic number for ") and text.endswith("mentioned in the provided text is ")
            else:
                assert text.endswith("mentioned in the provided text are")
            assert all(0 <= d <= 1 for d in s.depths)
    # needles spread over the haystack: with 4 needles, one per quarter (before snapping to a sentence end)
    depths = [d for s in ruler_samples(tok, "niah_multivalue", 4000, 5, seed=0, haystack=source) for d in sorted(s.depths)]
    assert min(depths[0::4]) < 0.3 and max(depths[3::4]) > 0.7


def test_vt_chain_is_in_the_context(tok):
    for s in ruler_samples(tok, "vt", LENGTH, 3, seed=0):
        text = tok.decode(s.context)
        main = text[text.rindex("Memorize and track"):]  # after the one-shot example
        names = s.references
        value = re.search(rf"VAR {names[0]} = (\d{{5}})\n", main).group(1)
        links = [m.start() for m in re.finditer("|".join(re.escape(f"VAR {b} = VAR {a}\n") for a, b in zip(names, names[1:])), main)]
        assert len(links) == 4 and links == sorted(links)
        assert len(re.findall(r"^VAR ", main, re.M)) == 5
        assert f"Find all variables that are assigned the value {value} in the text above." in main
        assert main.endswith(f"5 variables are assgined the value {value}, they are: ")
        assert "The grass is green." in main


def test_cwe_common_words_are_the_most_frequent(tok):
    for length in (LENGTH, 7000):  # RULER's short (6/1) and long (30/3) frequencies
        for s in ruler_samples(tok, "cwe", length, 2, seed=0):
            text = tok.decode(s.context)
            listed = text[text.rindex("appear most often.\n"):text.rindex("\nQuestion:")]
            counts = Counter(re.findall(r"\d+\. ([a-z]+)", listed))
            top = [w for w, _ in counts.most_common(10)]
            assert sorted(top) == sorted(s.references) and len(set(s.references)) == 10
            rest = max(c for w, c in counts.items() if w not in s.references)
            assert min(counts[w] for w in s.references) == (6 if length < 4096 else 30) > rest
            numbers = [int(n) for n in re.findall(r"(\d+)\. [a-z]", listed)]
            assert numbers == list(range(1, len(numbers) + 1))


def test_string_match_all_metric():
    refs = ["1234567", "7654321", "ABCDE", "hello"]
    assert string_match_all("1234567, 7654321, abcde and HELLO.", refs) == 100.0
    assert string_match_all("", refs) == 0.0
    assert string_match_all("The numbers are 1234567 and 7654321.", refs) == 50.0
    assert string_match_all("abcde\x00", ["ABCDE"]) == 100.0
    assert string_match_all("123456", ["1234567"]) == 0.0


def test_generated_scores_on_hand_made_predictions(tok, monkeypatch):
    samples = ruler_samples(tok, "niah_multivalue", LENGTH, 2, seed=0, haystack="noise", max_new_tokens=4)
    samples += ruler_samples(tok, "cwe", LENGTH, 1, seed=0, max_new_tokens=4)
    answers = {tuple(samples[0].context): " " + ", ".join(samples[0].references),  # perfect
               tuple(samples[1].context): " " + " ".join(samples[1].references[:3]),  # 3 of 4
               tuple(samples[2].context): ""}  # nothing
    monkeypatch.setattr(ruler, "generate_greedy", lambda model, tokenizer, contexts, n, batch_size=1: [answers[tuple(c)] for c in contexts])
    rows = evaluate_samples(None, tok, samples)
    assert [r["score"] for r in rows] == [100.0, 75.0, 0.0]
    assert rows[0]["prediction"] == answers[tuple(samples[0].context)] and rows[2]["references"] == samples[2].references


def test_teacher_forced_subtask_with_a_perfect_model(tok, haystack):
    result = _run(OracleModel(), tok, [800, 900], progress=False, subtasks=["niah_multikey"], samples=3, haystack=haystack, batch_size=2)
    for length in (800, 900):
        assert result[length]["score"] == 100.0 and result[length]["subtasks"]["niah_multikey"] == {"score": 100.0, "n": 3}
        assert all(row["predicted"] == row["references"][0] for row in result[length]["samples"])


def test_run_end_to_end_on_the_tiny_model(tok, haystack):
    model = tiny_model("llama", vocab_size=len(tok))
    result = _run(model, tok, [1800, 2000], seed=0, progress=False, samples=1, haystack=haystack, max_new_tokens=6)
    assert set(result) == {1800, 2000}
    for length, r in result.items():
        assert set(r) == {"score", "n", "subtasks", "samples"} and r["n"] == len(SUBTASKS) == len(r["samples"])
        assert set(r["subtasks"]) == set(SUBTASKS) and 0 <= r["score"] <= 100
        assert r["score"] == pytest.approx(sum(t["score"] for t in r["subtasks"].values()) / len(SUBTASKS))
        for row in r["samples"]:
            assert row["subtask"] in SUBTASKS and 0 <= row["score"] <= 100 and row["references"]
            assert ("predicted" in row) == (row["subtask"] == "niah_multikey") != ("prediction" in row)
    assert TASKS["ruler"].run is _run and TASKS["ruler"].higher_is_better


def test_errors(tok, haystack):
    with pytest.raises(RopekitError, match="unknown RULER subtask 'niah_single'"):
        _run(OracleModel(), tok, [2000], progress=False, subtasks="niah_multikey,niah_single")
    with pytest.raises(RopekitError, match=r"RULER length 300 is too short for niah_multikey \(about \d+ tokens minimum\)"):
        _run(OracleModel(), tok, [2000, 300], progress=False, subtasks=["niah_multikey"], haystack=haystack)
    for subtask in SUBTASKS:
        with pytest.raises(RopekitError, match=f"too short for {subtask}") as err:
            ruler_samples(tok, subtask, 200, 1, haystack="noise")
        assert "\n" not in str(err.value)
