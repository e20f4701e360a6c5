"""ropekit's LongBench and RULER scoring against lm-eval's own (lm-eval 0.4.13: lm_eval/tasks/longbench/metrics.py and
the task YAMLs beside it; lm_eval/tasks/ruler/common_utils.py) on hand-made predictions: equal, or the documented
difference (docs/serving.md, "lm-evaluation-harness")."""

import re
from pathlib import Path

import pytest

from ropekit.eval import longbench, ruler

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'ropekit[lm-eval]')")
lb = pytest.importorskip("lm_eval.tasks.longbench.metrics", reason="lm-eval's LongBench metrics need jieba, fuzzywuzzy, rouge (lm-eval[longbench])")
from lm_eval.tasks.ruler import common_utils as lm_ruler  # noqa: E402

TASKS = Path(lm_eval.__file__).parent / "tasks" / "longbench"
CLASSES = ["Abbreviation", "Entity", "Description", "Human being", "Location", "Numeric value", "Human", "Number"]
# (dataset, prediction, answers) — hand-made, covering each metric's corner cases
CASES = [
    ("hotpotqa", "The Eiffel Tower, in Paris.", ["Eiffel Tower"]),
    ("2wikimqa", "  an answer with   spaces  ", ["answer spaces", "other"]),
    ("narrativeqa", "", ["nothing"]),
    ("triviaqa", "Paris", ["paris", "Paris, France"]),
    ("gov_report", "The report says spending rose. It also fell later.", ["Spending rose in the report. Later it fell."]),
    ("qmsum", "no overlap at all", ["completely different words"]),
    ("samsum", "Anna will bring the cake.", ["Anna brings cake to the party."]),
    ("trec", "Location", ["Location"]),
    ("trec", "Human being or Human", ["Human being"]),
    ("passage_count", "There are 12 unique paragraphs, not 13.", ["12"]),
    ("passage_retrieval_en", "Paragraph 7", ["Paragraph 7"]),
    ("passage_retrieval_en", "Paragraph 3 or 7", ["Paragraph 7"]),
    ("lcc", "    return x + 1\n", ["return x + 1"]),
    ("repobench-p", "```python\n# comment\nresult = compute(a, b)\n", ["result = compute(a, b)"]),
    ("lcc", "x = 1\n\n", ["y = 2"]),
]
# Where lm-eval's scoring intentionally differs from LongBench's eval.py (which ropekit follows):
DIFFERENT = [
    # first-line rule: LongBench's eval.py scores only the first line for trec/triviaqa/samsum/lsht; lm-eval instead
    # stops generation at "\n" (`until: ["\n"]` in trec.yaml, triviaqa.yaml, samsum.yaml) and scores the whole string.
    ("triviaqa", "Paris\nLondon Berlin Madrid Rome", ["Paris"]),
    # code: eval.py takes the first line after lstrip("\n") even if it is blank; lm-eval skips blank lines
    # (metrics.py code_sim_score: `if line.strip() == "": continue`).
    ("lcc", "\n   \nreturn y\n", ["return y"]),
]


def _lm_eval_score(dataset, prediction, answers):
    yaml = (TASKS / f"{dataset}.yaml").read_text()
    function = re.search(r"process_results: !function metrics\.(\w+)", yaml).group(1)
    return getattr(lb, function)({"answers": answers, "all_classes": CLASSES}, [prediction])["score"]


@pytest.mark.parametrize("dataset,prediction,answers", CASES)
def test_longbench_scores_equal_lm_eval(dataset, prediction, answers):
    ours = longbench.score_sample(dataset, prediction, answers, all_classes=CLASSES)
    assert ours == pytest.approx(_lm_eval_score(dataset, prediction, answers), abs=1e-9)


def test_longbench_documented_differences():
    triviaqa, lcc_blank_first = DIFFERENT
    # first-line rule vs. lm-eval's stop sequence: equal once the generation is cut at "\n" as lm-eval's YAML does
    assert "until: [\"\\n\"]" in (TASKS / "triviaqa.yaml").read_text()
    ours = longbench.score_sample(*triviaqa)
    assert ours == 1.0 and _lm_eval_score(*triviaqa) < 1.0
    assert _lm_eval_score(triviaqa[0], triviaqa[1].split("\n")[0], triviaqa[2]) == ours
    # a blank (whitespace) first line in a code prediction: eval.py scores that line, lm-eval the next one
    assert longbench.score_sample(*lcc_blank_first) < 0.5 and _lm_eval_score(*lcc_blank_first) == 1.0
    # scale: ropekit (like eval.py) reports 100 × mean rounded to 2 decimals; lm-eval the mean in [0, 1]
    scores = [longbench.score_sample(d, p, a, all_classes=CLASSES) for d, p, a in CASES]
    assert longbench.dataset_score(scores) == round(100 * sum(scores) / len(scores), 2)


@pytest.mark.parametrize("prediction,references", [
    ("The special magic number is 7712.", ["7712"]),
    ("numbers: 11, 22\x07 and 33", ["11", "22", "33"]),
    ("  VARIABLES x1 and X2  ", ["x1", "x2", "x3"]),
    ("", ["anything"]),
])
def test_ruler_string_match_all_equals_lm_eval(prediction, references):
    ours = ruler.string_match_all(prediction, references)  # percent, per sample
    theirs = lm_ruler.string_match_all(lm_ruler.postprocess_pred([prediction]), [references])  # fraction
    assert ours == pytest.approx(100 * theirs)
