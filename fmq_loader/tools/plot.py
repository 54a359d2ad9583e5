"""Chart of images/s against num_workers, one line per loader (matplotlib, optional).

Used by ``fmq-loader bench --plot FILE.png`` and ``python -m fmq_loader.bench loader
--plot FILE.png``. matplotlib is the ``plot`` extra: ``pip install "fmq-loader[plot]"``
(or ``pip install matplotlib``); ``require_matplotlib()`` says so before any work starts.
The figure is drawn with the Agg canvas directly, so pyplot's global state and any
display backend are left alone.
"""

from __future__ import annotations

import os
from typing import Mapping

__all__ = ["require_matplotlib", "plot_workers", "PNG_SIGNATURE"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_STYLE = {"FMQLoader": dict(color="#1f6fb4", marker="o"),
          "torch DataLoader": dict(color="#d9731a", marker="s")}


class PlotUnavailable(ImportError):
    """matplotlib is not installed; the message names the package to install."""


def require_matplotlib() -> None:
    """Raise ``PlotUnavailable`` naming what to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed; run `pip install matplotlib` "
            "(or `pip install \"fmq-loader[plot]\"`), or leave out --plot") from None


def plot_workers(results: Mapping[str, Mapping[int, float]], path: str | os.PathLike,
                 title: str = "", note: str = "") -> str:
    """Write a PNG line chart: images/s (y) against num_workers (x), a line per loader.

    Args:
        results: ``{"FMQLoader": {1: 610.0, 2: 1190.0}, "torch DataLoader": {...}}``.
        path: the PNG to write (its folder must exist).
        title: the chart's title.
        note: small print under the plot (machine, command); may hold newlines.

    Returns:
        the path written.

    Raises:
        PlotUnavailable: matplotlib is not installed.
        ValueError: no figures to plot.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results or not any(results.values()):
        raise ValueError("nothing to plot: results has no images/s figures; run the sweep first")
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    workers = sorted({w for series in results.values() for w in series})
    top = 0.0
    highest = {w: max(s[w] for s in results.values() if w in s) for w in workers}
    for name, series in results.items():
        xs = sorted(series)
        ys = [series[w] for w in xs]
        top = max(top, *ys)
        ax.plot(xs, ys, label=name, linewidth=2, markersize=6,
                **_STYLE.get(name, {}))
        for x, y in zip(xs, ys):  # the higher figure above its point, the other below
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points",
                        xytext=(0, 7 if y >= highest[x] else -14), ha="center", fontsize=8,
                        color=_STYLE.get(name, {}).get("color", "black"))
    ax.set_xticks(workers)
    ax.set_xlabel("num_workers")
    ax.set_ylabel("images/s")
    ax.set_ylim(0, top * 1.18 if top > 0 else 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=11)
    if note:
        lines = note.count("\n") + 1
        fig.text(0.01, 0.01, note, fontsize=7, color="#555555", va="bottom")
        fig.subplots_adjust(bottom=0.14 + 0.035 * lines)
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
