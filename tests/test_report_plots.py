"""Plots read at any grid size: the NIAH heatmap at its extremes (1 depth × 2 lengths, 20 × 20)."""

import pytest

from ropekit.plotting import DPI
from ropekit.studies.report import heatmap, heatmap_figure


def _inside(inner, outer, slack=0.5) -> bool:
    return (inner.x0 >= outer.x0 - slack and inner.x1 <= outer.x1 + slack and inner.y0 >= outer.y0 - slack
            and inner.y1 <= outer.y1 + slack)


def _disjoint(boxes) -> bool:
    return all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


@pytest.mark.parametrize("depths,lengths", [(1, 2), (20, 20), (10, 4)])
def test_niah_heatmap_is_legible_at_any_grid_size(tmp_path, depths, lengths):
    grid = [[(37 * i + 11 * j) % 101 for j in range(lengths)] for i in range(depths)]
    columns = [f"{4 * (j + 1)}K" for j in range(lengths)]
    rows = [f"{i / max(1, depths - 1):.0%}" for i in range(depths)]
    fig = heatmap_figure(grid, columns, rows, "NIAH — eabf:layers=entropy", xlabel="context length", ylabel="needle depth",
                         colorbar_label="accuracy %")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax, bar = fig.axes
    figure_box = fig.bbox
    # every cell is labelled with its value, and each label fits inside its own cell
    texts = ax.texts
    assert sorted(t.get_text() for t in texts) == sorted(f"{v:.0f}" for row in grid for v in row)
    cell_w = ax.bbox.width / lengths
    cell_h = ax.bbox.height / depths
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.width < cell_w and box.height < cell_h
    # tick labels: one per row and column, inside the figure, not overlapping each other
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [label.get_window_extent(renderer) for label in labels if label.get_text()]
        assert all(_inside(b, figure_box) for b in boxes) and _disjoint(boxes)
    assert [t.get_text() for t in ax.get_xticklabels()] == columns and [t.get_text() for t in ax.get_yticklabels()] == rows
    # the colour bar, the title and the axis labels are drawn and inside the figure
    assert bar.get_ylabel() == "accuracy %" and bar.bbox.x0 > ax.bbox.x1
    for artist in (ax.title, ax.xaxis.label, ax.yaxis.label, bar.yaxis.label):
        assert artist.get_text() and _inside(artist.get_window_extent(renderer), figure_box)
    # the figure grows with the grid: fixed room per cell
    width, height = fig.get_size_inches()
    assert width >= 0.6 * lengths and height >= 0.3 * depths
    path = heatmap(grid, columns, rows, "NIAH", tmp_path / "h.png")
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] >= 0.6 * lengths * DPI and image.size[1] >= 0.3 * depths * DPI


def test_heatmap_sizes_scale_with_the_grid():
    small = heatmap_figure([[50, 100]], ["4K", "8K"], ["50%"], "small").get_size_inches()
    large = heatmap_figure([[50] * 20 for _ in range(20)], [f"{n}K" for n in range(20)], [f"{d}%" for d in range(20)], "large").get_size_inches()
    assert large[0] > 2.5 * small[0] and large[1] > 3 * small[1]
    assert small[0] >= 4 and small[1] >= 2  # the smallest grid still has room for its title and colour bar


@pytest.mark.parametrize("count", [3, 17])
def test_line_plots_keep_every_run_apart(tmp_path, monkeypatch, count):
    """The lab's 17 rows in one plot: every line has its own colour-and-style, and a long legend sits outside the
    axes (inside the figure) so it hides no line; a short one stays inside."""
    from ropekit.studies import report

    seen = {}
    original = report._save

    def save(fig, path, tight=True):  # measure the laid-out figure, then save it as usual
        if tight:
            fig.tight_layout()
        fig.canvas.draw()
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        seen.update(ax=ax, legend=ax.get_legend(), legend_box=ax.get_legend().get_window_extent(renderer),
                    axes_box=ax.bbox.frozen(), figure_box=fig.bbox.frozen())
        return original(fig, path, tight=False)

    monkeypatch.setattr(report, "_save", save)
    lengths = [128, 256, 512, 1024, 2048]
    runs = [{"label": f"row-{i}", "native_length": 128,
             "results": {"lab-passkey": {str(n): {"score": (13 * i + n) % 101} for n in lengths}}} for i in range(count)]
    results = {"lengths": lengths, "runs": runs, "tasks": {"lab-passkey": {"metric": "accuracy %", "higher_is_better": True}}}
    path = report.plot_scores_vs_length(results, "lab-passkey", tmp_path / "p.png", column={"key": "score", "label": "lab-passkey",
                                                                                            "metric": "accuracy %", "higher_is_better": True})
    assert path.is_file()
    lines = [line for line in seen["ax"].get_lines() if line.get_label().startswith("row-")]
    assert len(lines) == count
    assert len({(tuple(line.get_color()), line.get_linestyle(), line.get_marker()) for line in lines}) == count
    assert [t.get_text() for t in seen["legend"].get_texts()] == [f"row-{i}" for i in range(count)]
    box = seen["legend_box"]
    assert _inside(box, seen["figure_box"])
    if count > report.LEGEND_INSIDE_MAX:
        assert box.x0 >= seen["axes_box"].x1  # beside the axes, not over the lines
    else:
        assert _inside(box, seen["axes_box"])
