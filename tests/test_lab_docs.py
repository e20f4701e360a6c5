"""docs/lab.md says what the committed default lab measured: every number and verdict it quotes is tagged with the
cell or claim of docs/results/lab/default/results.json it comes from, and this test reads them back.

Tags (HTML comments, invisible when rendered), each right after the value it names, every number rounded as printed:
``<!-- r: LABEL;TASK;MULTIPLE;KEY -->`` a cell's seed mean (``KEY`` score, far, middle_third) or, as ``KEY.I``
(seeds, far_seeds, middle_seeds), pre-training seed I's own value;
``<!-- d: CLAIM;A;B;METRIC;FIELD -->`` a paired accuracy claim's pooled ``FIELD`` (mean_a, mean_b, diff, low, high)
in points; ``<!-- p: SEED;TASK -->`` the last point of a pre-training seed's learning curve (passkey, kv);
``<!-- s: SEED;STAGE -->`` seconds of wall time (``SEED`` a pre-training seed or ``all``; ``STAGE`` total,
pretrain, rows, evaluate);
``<!-- v: CLAIM;A;B;METRIC -->`` a paired claim row's verdict; ``<!-- l: I -->`` the I-th lab requirement's verdict. The committed run's own lab.md must also be what :func:`lab_markdown` renders from its
results.json, so the tables and the claims can never drift from the numbers.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "lab.md"
RUN = ROOT / "docs" / "results" / "lab" / "default"
NUMBER = r"([+−-]?[\d,]+(?:\.\d+)?)"  # signed as the docs print differences: +9.3, −16.0
VERDICT = r"\*\*(confirmed|refuted|tie|not decidable here|not run|partly)\*\*"


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads((RUN / "results.json").read_text())


def _cell(results, label, task, multiple, key):
    native = results["lab"]["shape"]["native"]
    run = next(r for r in results["runs"] if r["label"] == label)
    key, _, seed = key.partition(".")
    value = run["results"][task][str(int(multiple) * native)][key]
    return value[int(seed)] if seed else value


def _claim(results, key, a, b, metric):
    rows = [c for c in results["claims"] if (c.get("key"), c.get("a"), c.get("b"), c.get("metric")) == (key, a, b, metric)]
    assert len(rows) == 1, f"{key};{a};{b};{metric}: {len(rows)} claim rows"
    return rows[0]


def _pooled(results, key, a, b, metric, field):
    row = _claim(results, key, a, b, metric)
    assert row["unit"] == "accuracy", f"{key};{a};{b};{metric}: d tags quote accuracy points"
    return 100 * row["pooled"][field]


def _pretrained(results, seed, task):
    info = next(s for s in results["lab"]["seeds"] if str(s["seed"]) == seed)
    return info["pretrain"]["learning_curve"][-1][task]


def _seconds(results, seed, stage):
    seeds = [s for s in results["lab"]["seeds"] if seed == "all" or str(s["seed"]) == seed]
    assert seeds, f"no pre-training seed {seed}"
    pick = {"total": lambda s: s["seconds"], "pretrain": lambda s: s["stages"]["pretrain"]["seconds"],
            "rows": lambda s: sum(v["seconds"] for v in s["stages"]["extend"].values()),
            "evaluate": lambda s: s["stages"]["evaluate"]["seconds"]}[stage]
    return sum(pick(s) for s in seeds)


def test_the_committed_default_is_three_seeds_on_test_items(results):
    info = results["lab"]
    assert info["items"] == "test"
    assert len(info["seeds"]) >= 3
    assert len({s["eval_seed"] for s in info["seeds"]}) == len(info["seeds"])  # independent items per seed
    assert info["shape"]["layers"] > 2  # the layer rule is decidable
    paired = [c for c in results["claims"] if c["group"] in ("paper", "ropekit")]
    assert paired and all(c["verdict"] in ("confirmed", "refuted", "tie", "not decidable here") for c in paired)


def test_every_number_lab_md_quotes_is_the_files(results):
    text = DOC.read_text()
    readers = {"r": _cell, "d": _pooled, "p": _pretrained, "s": _seconds}
    checked = 0
    for value, kind, tag in re.findall(NUMBER + r" <!-- ([rdps]): (.*?) -->", text):
        expected = readers[kind](results, *tag.split(";"))
        digits = len(value.split(".")[1]) if "." in value else 0
        printed = float(value.replace(",", "").replace("−", "-"))
        assert printed == pytest.approx(round(expected, digits), abs=1e-9), f"{kind}: {tag}: docs say {value}, results.json {expected}"
        checked += 1
    assert checked == len(re.findall(r"<!-- [rdps]: ", text)), "a number tag in docs/lab.md does not follow a number"
    assert checked >= 10, "docs/lab.md should quote the default lab's numbers with their tags"
    assert "{{" not in text, "an unfilled placeholder is left in docs/lab.md"


def test_every_verdict_lab_md_quotes_is_the_files(results):
    text = DOC.read_text()
    checked = 0
    for verdict, tag in re.findall(VERDICT + r" <!-- v: (.*?) -->", text):
        row = _claim(results, *tag.split(";"))
        assert row["verdict"] == verdict, f"{tag}: docs say {verdict}, results.json {row['verdict']}"
        checked += 1
    requirements = [c for c in results["claims"] if c["group"] == "lab"]
    for verdict, index in re.findall(VERDICT + r" <!-- l: (\d+) -->", text):
        assert requirements[int(index)]["verdict"] == verdict, f"requirement {index}"
        checked += 1
    assert checked == len(re.findall(r"<!-- [vl]: ", text)), "a verdict tag in docs/lab.md does not follow a **verdict**"
    assert checked >= 5


def test_the_committed_lab_md_is_rendered_from_its_results(results):
    from ropekit.studies.lab.markdown import lab_markdown

    def body(text):  # the machine line names the CPU this test runs on, not the one the lab ran on
        return [line for line in text.splitlines() if not line.startswith("- machine:")]

    assert body((RUN / "lab.md").read_text()) == body(lab_markdown(results, results["claims"]))


def test_every_table_in_lab_md_has_its_header_and_each_verdict_sits_under_its_metric():
    """A table whose header row is missing or stands apart renders as plain text; a verdict under the wrong column
    header reads as another metric's verdict."""
    lines = DOC.read_text().splitlines()
    verdicts = 0
    for i, line in enumerate(lines):
        if not re.fullmatch(r"\|(?:-+\|)+", line.strip()):
            continue
        header = [c.strip() for c in lines[i - 1].strip().strip("|").split("|")]
        assert lines[i - 1].startswith("|") and len(header) == line.count("|") - 1, \
            f"docs/lab.md line {i + 1}: a table without its header row"
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            for column, cell in enumerate(row.strip().strip("|").split("|")):
                for metric in re.findall(r"<!-- v: [^;]*;[^;]*;[^;]*;(.*?) -->", cell):
                    assert header[column] == metric, f"docs/lab.md: a {metric} verdict under the column {header[column]!r}"
                    verdicts += 1
    assert verdicts == len(re.findall(r"<!-- v: ", "\n".join(lines))), "a verdict tag in docs/lab.md sits outside a table"
