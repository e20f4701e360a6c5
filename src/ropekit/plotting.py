"""matplotlib set up once for files, never a screen (the Agg backend), and figures saved as PNG at one resolution:
shared by the report, the lab and LongRecipe's selection report."""

from __future__ import annotations

from pathlib import Path

DPI = 110


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: plotting is optional work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` as PNG and close it."""
    plt = pyplot()
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
