"""``ropekit report DIR``: render ``DIR/results.json`` into ``report.md`` and a self-contained ``report.html``.

Sections: the setup (device, versions, exact command, seed), one table per task (runs × lengths), and PNG plots —
perplexity vs length, accuracy vs length, NIAH heatmaps (depth × length), accuracy by position (lost in the middle)
for tasks that report it (``lines``, ``kv``, ``lab-kv``), and attention-entropy curves per layer against the uniform ln n. The HTML embeds the PNGs, so
it can be mailed as one file; the Markdown links them from ``DIR/plots/``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .errors import RopekitError
from .eval.merge import find_result_sets, load_merged
from .eval.runner import format_score, score_of
from .lengths import format_length


def load_results(directory: str | Path) -> dict:
    """``DIR/results.json``, or — for a study run in slices — every ``DIR/<slice>/results.json`` merged into one."""
    path = Path(directory).expanduser()
    if path.is_dir() and not (path / "results.json").is_file() and find_result_sets(path):
        return load_merged(path)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise RopekitError(f"no results.json in {directory}", "pass the --output directory of `ropekit eval` or `ropekit compare`")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RopekitError(f"{path} is not valid JSON ({err.msg})", "re-run the evaluation (it resumes from its cache)") from None
    if results.get("format") != 2 or "runs" not in results:
        raise RopekitError(f"{path} is not a ropekit results file (format 2)", "re-run the evaluation with this ropekit version")
    return results


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scores_vs_length(results: dict, task: str, path: Path) -> Path:
    plt = _plt()
    lengths = results["lengths"]
    meta = results["tasks"][task]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for run in results["runs"]:
        ys = [score_of(run, task, n) for n in lengths]
        ax.plot([n for n, y in zip(lengths, ys) if y is not None], [y for y in ys if y is not None], marker="o", label=run["label"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [format_length(n) for n in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(meta["metric"])
    if task == "ppl":
        ax.set_yscale("log")
    natives = {run.get("native_length") for run in results["runs"] if run.get("native_length")}
    for native in natives:
        ax.axvline(native, color="grey", linestyle=":", linewidth=1)
    ax.set_title(f"{task}: {meta['metric']} vs length ({'higher' if meta['higher_is_better'] else 'lower'} is better)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_niah(results: dict, run: dict, path: Path) -> Path:
    plt = _plt()
    lengths = [n for n in results["lengths"] if str(n) in run["results"].get("niah", {})]
    depths = list(run["results"]["niah"][str(lengths[0])]["depths"])
    grid = [[run["results"]["niah"][str(n)]["depths"][d] for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(lengths), 0.6 + 0.35 * len(depths)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{float(d):.0%}" for d in depths])
    ax.set_xlabel("context length")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
    ax.set_title(f"NIAH — {run['label']}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, label="accuracy %")
    return _save(fig, path)


def plot_positions(results: dict, task: str, path: Path) -> Path:
    plt = _plt()
    lengths = results["lengths"]
    fig, axes = plt.subplots(1, len(lengths), figsize=(3.2 * len(lengths), 3), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], lengths):
        for run in results["runs"]:
            data = run["results"].get(task, {}).get(str(n))
            if data:
                xs = [float(p) for p in data["positions"]]
                ax.plot(xs, list(data["positions"].values()), marker="o", label=run["label"])
        ax.set_title(f"{task} @ {format_length(n)}", fontsize=9)
        ax.set_xlabel("position of the gold item")
        ax.set_ylim(-5, 105)
    axes[0][0].set_ylabel("accuracy %")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)


def plot_entropy(results: dict, run: dict, path: Path) -> Path:
    plt = _plt()
    data = run["results"]["entropy"]
    lengths = [n for n in results["lengths"] if str(n) in data]
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, n in zip(axes[0], lengths):
        d = data[str(n)]
        layers = d["layers"]
        for i, curve in enumerate(layers):
            width = 2.2 if i in d["uniform_like_layers"] else 0.8
            ax.plot([p + 1 for p in d["positions"]], curve, color=cmap(i / max(1, len(layers) - 1)), linewidth=width,
                    label=f"layer {i}" if i in d["uniform_like_layers"] or i in (0, 1, len(layers) - 1) else None)
        ax.plot([p + 1 for p in d["positions"]], d["uniform"], color="black", linestyle="--", label="uniform ln n")
        native = run.get("native_length")
        if native and native < n:
            ax.axvline(native, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("query position")
        ax.set_ylabel("entropy (nats)")
        ax.set_title(f"{run['label']} @ {format_length(n)}", fontsize=9)
        ax.legend(fontsize=6)
    return _save(fig, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def render(directory: str | Path) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` next to ``results.json``; returns the two reports."""
    directory = Path(directory).expanduser()
    results = load_results(directory)
    directory = directory if directory.is_dir() else directory.parent
    plots = directory / "plots"
    plots.mkdir(exist_ok=True)
    lengths = results["lengths"]
    env = results["environment"]
    md = [f"# ropekit {results['kind']} report", "",
          f"- device: {env['device']}", f"- versions: ropekit {env['ropekit']}, torch {env['torch']}, transformers {env['transformers']}, "
          f"Python {env['python']}", f"- command: `{env['command']}`", f"- seed: {results['seed']}; started {results['started']}; "
          f"wall time {results.get('seconds', 0):.0f} s", ""]
    md += ["## Runs", "", "| run | model | method | target | native | seconds |", "|---|---|---|---|---|---|"]
    for run in results["runs"]:
        md.append(f"| {run['label']} | {run['model']} | {run.get('method') or (run.get('record') or {}).get('method') or 'as loaded'} | "
                  f"{run.get('target_length') or (run.get('record') or {}).get('target_length') or '-'} | {run.get('native_length', '-')} | {run.get('seconds', '-')} |")
    md.append("")
    figures: list[tuple[str, Path]] = []
    for task, meta in results["tasks"].items():
        md += [f"## {task}", "", f"{meta['summary']}. Score: {meta['metric']} ({'higher' if meta['higher_is_better'] else 'lower'} is better). "
               f"Options: `{json.dumps(meta['options'])}`.", ""]
        md += ["| run | " + " | ".join(format_length(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for run in results["runs"]:
            cells = []
            for n in lengths:
                cells.append(format_score(score_of(run, task, n), meta["higher_is_better"], digits=1))
            md.append(f"| {run['label']} | " + " | ".join(cells) + " |")
        md.append("")
        if task == "entropy":
            for run in results["runs"]:
                for n in lengths:
                    d = run["results"].get("entropy", {}).get(str(n))
                    if d:
                        md.append(f"- {run['label']} @ {format_length(n)}: near-uniform layers (late-position entropy ≥ 60% of ln n): "
                                  f"{d['uniform_like_layers'] or 'none'}; by layer: {', '.join(f'{x:.2f}' for x in d['late_normalised_by_layer'])}")
                if "entropy" in run["results"]:
                    figure = plot_entropy(results, run, plots / f"entropy_{_safe(run['label'])}.png")
                    figures.append((f"attention entropy — {run['label']}", figure))
                    md += ["", f"![entropy {run['label']}](plots/{figure.name})"]
            md.append("")
            continue
        figure = plot_scores_vs_length(results, task, plots / f"{_safe(task)}_vs_length.png")
        figures.append((f"{task} vs length", figure))
        md += [f"![{task}](plots/{figure.name})", ""]
        if task == "niah":
            for run in results["runs"]:
                if "niah" in run["results"]:
                    figure = plot_niah(results, run, plots / f"niah_{_safe(run['label'])}.png")
                    figures.append((f"NIAH — {run['label']}", figure))
                    md += [f"![niah {run['label']}](plots/{figure.name})", ""]
        if any("positions" in run["results"].get(task, {}).get(str(n), {}) for run in results["runs"] for n in lengths):
            figure = plot_positions(results, task, plots / f"{task}_by_position.png")
            figures.append((f"{task} by position", figure))
            md += [f"![{task} by position](plots/{figure.name})", ""]
    md_path = directory / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    html_path = directory / "report.html"
    html_path.write_text(_html(md, figures))
    return md_path, html_path


def _html(md_lines: list[str], figures: list[tuple[str, Path]]) -> str:
    """A small Markdown subset (headings, bullets, tables, images) to HTML, with images embedded as data URIs."""
    embedded = {f"plots/{path.name}": base64.b64encode(path.read_bytes()).decode() for _, path in figures}
    body, table = [], []

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            rest = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>")
            table.clear()

    for line in md_lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<p>• {html.escape(line[2:]).replace('`', '')}</p>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            src = src.rstrip(")")
            body.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{embedded[src]}"><figcaption>{html.escape(alt)}</figcaption></figure>')
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush_table()
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>ropekit report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
