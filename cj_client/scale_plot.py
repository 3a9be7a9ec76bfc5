"""`scores.png`: the ranking with 95% intervals, readable from a dozen essays to thousands.

Up to `LABELLED_ROWS` essays every essay gets a row and its label. Beyond that the plot is a
caterpillar: essays along the x axis in rank order, each a point with its interval, and labels
only for the best and weakest few and the flagged essays, wherever a label has room.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

LABELLED_ROWS = 40
EDGE_LABELS = 5
MAX_FLAG_LABELS = 15
_COLOURS = {"": "tab:blue", "misfit": "tab:red", "anchor": "tab:green"}


def scale_png(rows: Sequence[dict[str, Any]]) -> bytes:
    """Ranking rows (best first, with score, se and flags) drawn as a PNG image.

    The image is returned, not written: the caller writes it with the run's other files, whole.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display here: render to an image in memory
    import matplotlib.pyplot as plt

    fig = _rows(plt, rows) if len(rows) <= LABELLED_ROWS else _caterpillar(plt, rows)
    image = io.BytesIO()
    try:
        fig.savefig(image, format="png", dpi=120)
    finally:
        plt.close(fig)
    return image.getvalue()


def _kind(row: dict[str, Any]) -> str:
    flags = str(row.get("flags", "")).split(";")
    return "misfit" if "misfit" in flags else "anchor" if "anchor" in flags else ""


def _rows(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    ordered = list(reversed(rows))
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.4))
    for y, row in enumerate(ordered):
        ax.errorbar(row["score"], y, xerr=1.96 * row["se"], fmt="o", capsize=3,
                    color=_COLOURS[_kind(row)])  # fmt: skip
    ax.set_yticks(range(len(ordered)), [str(r["id"]) for r in ordered])
    _finish(ax, rows, horizontal=True)
    fig.tight_layout()
    return fig


def _caterpillar(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    ordered = list(reversed(rows))  # weakest on the left
    n = len(ordered)
    fig, ax = plt.subplots(figsize=(11, 6))
    xs = list(range(1, n + 1))
    scores = [r["score"] for r in ordered]
    spans = [1.96 * r["se"] for r in ordered]
    ax.vlines(xs, [s - e for s, e in zip(scores, spans, strict=True)],
              [s + e for s, e in zip(scores, spans, strict=True)],
              color="tab:blue", alpha=0.25, linewidth=max(0.3, min(2.0, 400 / n)))  # fmt: skip
    for kind, colour in _COLOURS.items():
        picked = [i for i, r in enumerate(ordered) if _kind(r) == kind]
        if not picked:
            continue
        size = max(2.0, 600 / n) * (1 if kind == "" else 4)
        ax.scatter([xs[i] for i in picked], [scores[i] for i in picked], s=size,
                   color=colour, zorder=3, label=kind or "essay")  # fmt: skip
    flagged = sorted((i for i, r in enumerate(ordered) if _kind(r)),
                     key=lambda i: -(ordered[i].get("infit") or 0.0))[:MAX_FLAG_LABELS]  # fmt: skip
    wanted = list(range(EDGE_LABELS)) + list(range(n - EDGE_LABELS, n)) + flagged
    placed: list[int] = []
    room = n / 45  # about one label per 45th of the axis, so labels never overlap
    for i in wanted:
        if any(abs(i - j) < room for j in placed):
            continue
        placed.append(i)
        ax.annotate(str(ordered[i]["id"]), (xs[i], scores[i] + spans[i]), rotation=90,
                    fontsize=7, ha="center", va="bottom", xytext=(0, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel(f"rank, weakest to best ({n} essays)")
    ax.set_xlim(0, n + 1)
    ax.margins(y=0.12)  # room for the labels above the best essays' intervals
    if any(_kind(r) for r in ordered):
        ax.legend(loc="upper left", fontsize=8)
    _finish(ax, rows, horizontal=False)
    fig.tight_layout()
    return fig


def _finish(ax: Any, rows: Sequence[dict[str, Any]], *, horizontal: bool) -> None:
    label = "score (logits) with 95% interval"
    if horizontal:
        ax.set_xlabel(label)
    else:
        ax.set_ylabel(label)
    flagged = sum(1 for r in rows if _kind(r) == "misfit")
    suffix = f"; {flagged} misfitting in red" if flagged else ""
    ax.set_title(f"Comparative judgement ranking{suffix}")
