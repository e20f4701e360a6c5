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

from ..errors import RopekitError
from ..eval.merge import find_result_sets, load_merged
from ..eval.runner import columns_of, format_score, score_of
from ..lengths import format_length
from ..machine import describe_machine
from ..plotting import pyplot as _plt, save_figure as _save  # module names: tests wrap _save




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


# Line plots: one style per run. Beyond ten runs tab10's colours repeat (two runs would share a colour), so the
# colours come from tab20 and the line style changes too; beyond six runs the legend moves outside the axes so it
# never hides a line.
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v")
LEGEND_INSIDE_MAX = 6


def run_styles(count: int) -> list[dict]:
    """``count`` distinct line styles (colour, line style, marker), as keyword arguments of ``Axes.plot``."""
    plt = _plt()
    if count <= 10:
        colors = [plt.get_cmap("tab10")(i) for i in range(10)]
        return [{"color": colors[i], "linestyle": "-", "marker": "o"} for i in range(count)]
    colors = [plt.get_cmap("tab20")(i) for i in range(20)]
    return [{"color": colors[i % 20], "linestyle": LINE_STYLES[i % len(LINE_STYLES)], "marker": MARKERS[i % len(MARKERS)]}
            for i in range(count)]


def _line_figsize(width: float, height: float, count: int, per_run: float) -> tuple[float, float]:
    """A line plot's size for ``count`` runs: room beside the axes for a legend moved outside, and height enough for
    a long legend's entries (``per_run`` inches each)."""
    return width + (0 if count <= LEGEND_INSIDE_MAX else 1.8), height if count <= 12 else per_run * count + 1


def _legend(ax, count: int, fontsize: int = 8) -> None:
    if count <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize=fontsize)
    else:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def plot_scores_vs_length(results: dict, task: str, path: Path, column: dict | None = None) -> Path:
    """One line per run: a task column (default its score) against length, log-2 length axis, native windows dotted."""
    plt = _plt()
    lengths = results["lengths"]
    column = column or columns_of(results["tasks"][task])[0]
    name = column["label"] or task
    runs = results["runs"]
    fig, ax = plt.subplots(figsize=_line_figsize(max(6.4, 0.45 * len(lengths)), 4, len(runs), per_run=0.25))
    for run, style in zip(runs, run_styles(len(runs))):
        ys = [score_of(run, task, n, column["key"]) for n in lengths]
        ax.plot([n for n, y in zip(lengths, ys) if y is not None], [y for y in ys if y is not None], label=run["label"], **style)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [format_length(n) for n in lengths], rotation=45 if len(lengths) > 8 else 0)
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(column["metric"])
    if column["metric"] == "perplexity":
        ax.set_yscale("log")
    natives = {run.get("native_length") for run in results["runs"] if run.get("native_length")}
    for native in natives:
        ax.axvline(native, color="grey", linestyle=":", linewidth=1)
    ax.set_title(f"{name}: {column['metric']} vs length ({'higher' if column['higher_is_better'] else 'lower'} is better)")
    _legend(ax, len(runs))
    return _save(fig, path)


def plot_niah(results: dict, run: dict, path: Path) -> Path:
    lengths = [n for n in results["lengths"] if str(n) in run["results"].get("niah", {})]
    depths = list(run["results"]["niah"][str(lengths[0])]["depths"])
    grid = [[run["results"]["niah"][str(n)]["depths"][d] for n in lengths] for d in depths]
    return heatmap(grid, [format_length(n) for n in lengths], [f"{float(d):.0%}" for d in depths], f"NIAH — {run['label']}", path,
                   xlabel="context length", ylabel="needle depth", colorbar_label="accuracy %")


# Heatmap geometry, in inches: every cell gets the same room whatever the grid's size, so a 1 × 2 grid and a
# 20 × 20 one both read (labels inside cells, tick labels, the colour bar) at the figure's natural size.
CELL_WIDTH, CELL_HEIGHT = 0.62, 0.34
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 1.1, 1.3, 0.55, 0.75
MIN_PLOT_WIDTH, MIN_PLOT_HEIGHT = 1.9, 1.0


def heatmap(grid: list[list[float]], columns: list[str], rows: list[str], title: str, path: Path, **labels) -> Path:
    """Save :func:`heatmap_figure` as a PNG."""
    return _save(heatmap_figure(grid, columns, rows, title, **labels), path, tight=False)


def heatmap_figure(grid: list[list[float]], columns: list[str], rows: list[str], title: str, xlabel: str = "",
                   ylabel: str = "", colorbar_label: str = "", vmin: float = 0, vmax: float = 100):
    """A labelled heatmap (rows × columns of values in [vmin, vmax]) whose size follows the grid: fixed room per
    cell, fixed margins for tick labels, titles and the colour bar. Each cell shows its value."""
    plt = _plt()
    plot_w = max(MIN_PLOT_WIDTH, CELL_WIDTH * len(columns))
    plot_h = max(MIN_PLOT_HEIGHT, CELL_HEIGHT * len(rows))
    width, height = MARGIN_LEFT + plot_w + MARGIN_RIGHT, MARGIN_BOTTOM + plot_h + MARGIN_TOP
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((MARGIN_LEFT / width, MARGIN_BOTTOM / height, plot_w / width, plot_h / height))
    bar = fig.add_axes(((MARGIN_LEFT + plot_w + 0.15) / width, MARGIN_BOTTOM / height, 0.14 / width, plot_h / height))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(columns)), columns, fontsize=8, rotation=0 if CELL_WIDTH * 72 >= 7 * max(map(len, columns)) else 45)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    cell_font = 8 if len(columns) * len(rows) <= 400 else 7
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            shade = (value - vmin) / (vmax - vmin) if vmax > vmin else 0.5
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=cell_font,
                    color="white" if shade < 0.15 or shade > 0.85 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, cax=bar, label=colorbar_label)
    bar.tick_params(labelsize=7)
    return fig


def plot_positions(results: dict, task: str, path: Path) -> Path:
    plt = _plt()
    lengths = results["lengths"]
    runs = results["runs"]
    styles = run_styles(len(runs))
    fig, axes = plt.subplots(1, len(lengths), figsize=_line_figsize(3.2 * len(lengths), 3, len(runs), per_run=0.22),
                             squeeze=False, sharey=True)
    for ax, n in zip(axes[0], lengths):
        for run, style in zip(runs, styles):
            data = run["results"].get(task, {}).get(str(n))
            if data:
                xs = [float(p) for p in data["positions"]]
                ax.plot(xs, list(data["positions"].values()), label=run["label"], **style)
        ax.set_title(f"{task} @ {format_length(n)}", fontsize=9)
        ax.set_xlabel("position of the gold item")
        ax.set_ylim(-5, 105)
    axes[0][0].set_ylabel("accuracy %")
    _legend(axes[0][-1], len(runs), fontsize=7)
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


def check_lines(runs: list[dict]) -> list[str]:
    """The before/after check each trained checkpoint carries in its ropekit record (``ropekit train`` writes it), as
    a Markdown table; nothing when no run was checked."""
    checked = [run for run in runs if ((run.get("record") or {}).get("check") or {}).get("rows")]
    if not checked:
        return []
    md = ["## Before/after check", "", "Each checkpoint against the model it was trained from, on the same items, written by "
          "`ropekit train` (held-out text perplexity and pass keys; a regression is judged inside the native window only).", "",
          "| run | text | length | window | PPL before | PPL after | change | pass keys before | after | verdict |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for run in checked:
        check = run["record"]["check"]
        for row in check["rows"]:
            keys = (f"{row['passkey_before']}/{row['trials']} | {row['passkey_after']}/{row['trials']}"
                    if row.get("passkey_before") is not None else "- | -")
            md.append(f"| {run['label']} | {check.get('text', '-')} | {format_length(row['length'])} | "
                      f"{'inside' if row['inside_window'] else 'beyond'} | {row['ppl_before']:.1f} | {row['ppl_after']:.1f} | "
                      f"{100 * row['ppl_change']:+.1f}% | {keys} | {check['verdict']} |")
    md += [f"- {run['label']} regressed: {'; '.join(run['record']['check']['regressions'])}" for run in checked
           if run["record"]["check"].get("regressions")]
    return md + [""]


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
          f"wall time {results.get('seconds', 0):.0f} s" + (f" (first-run setup {results['setup_seconds']:.0f} s before it)"
                                                             if results.get("setup_seconds", 0) >= 1 else "")]
    if "machine" in env:
        md.append(f"- machine: {describe_machine(env['machine'])} (measured at the start of the run)")
    md.append("")
    md += ["## Runs", "", "| run | model | method | target | native | seconds |", "|---|---|---|---|---|---|"]
    for run in results["runs"]:
        md.append(f"| {run['label']} | {run['model']} | {run.get('method') or (run.get('record') or {}).get('method') or 'as loaded'} | "
                  f"{run.get('target_length') or (run.get('record') or {}).get('target_length') or '-'} | {run.get('native_length', '-')} | {run.get('seconds', '-')} |")
    md.append("")
    md += check_lines(results["runs"])
    figures: list[tuple[str, Path]] = []
    for task, meta in results["tasks"].items():
        columns = columns_of(meta)
        md += [f"## {task}" + (f" (format v{meta['version']})" if "version" in meta else ""), "", f"{meta['summary']}. " + "; ".join(
            f"{c['label'] or 'score'}: {c['metric']} ({'higher' if c['higher_is_better'] else 'lower'} is better)" for c in columns)
            + f". Options: `{json.dumps(meta['options'])}`.", ""]
        for column in columns:
            if len(columns) > 1:
                md += [f"{column['label']}:", ""]
            md += ["| run | " + " | ".join(format_length(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
            for run in results["runs"]:
                cells = [format_score(score_of(run, task, n, column["key"]), column["higher_is_better"], digits=1) for n in lengths]
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
        for column in columns:
            name = task if column["key"] == "score" else f"{task}_{column['key']}"
            figure = plot_scores_vs_length(results, task, plots / f"{_safe(name)}_vs_length.png", column)
            figures.append((f"{column['label'] or task} vs length", figure))
            md += [f"![{name}](plots/{figure.name})", ""]
        if task == "niah":
            for run in results["runs"]:
                if "niah" in run["results"]:
                    figure = plot_niah(results, run, plots / f"niah_{_safe(run['label'])}.png")
                    figures.append((f"NIAH — {run['label']}", figure))
                    md += [f"![niah {run['label']}](plots/{figure.name})", ""]
        if any("positions" in run["results"].get(task, {}).get(str(n), {}) for run in results["runs"] for n in lengths):
            figure = plot_positions(results, task, plots / f"{_safe(task)}_by_position.png")
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
