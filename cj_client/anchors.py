"""Anchor files (`cj assess --anchors FILE`): CSV `id,score`, essays whose scores are fixed."""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Mapping
from pathlib import Path


class AnchorFileError(ValueError):
    """An anchor file that cannot be used; the message is one line naming the cause."""


def load_anchors(path: Path) -> dict[str, float]:
    """Anchor scores by essay id from a CSV file with the header `id,score`.

    Raises:
        AnchorFileError: the file is missing or unreadable, the header is not `id,score`, a
            row has no id or a score that is not a finite number, an id repeats, or there
            are no rows.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnchorFileError(f"{path}: cannot read anchors: {exc}") from None
    reader = csv.reader(text.splitlines())
    header = [cell.strip().lower() for cell in next(reader, [])]
    if header[:2] != ["id", "score"]:
        raise AnchorFileError(f"{path}:1: expected the header id,score, found {','.join(header)!r}")
    anchors: dict[str, float] = {}
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip():
            raise AnchorFileError(f"{path}:{number}: expected id,score, found {','.join(row)!r}")
        essay, raw = row[0].strip(), row[1].strip()
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise AnchorFileError(f"{path}:{number}: score {raw!r} of {essay!r} is not a number")
        if essay in anchors:
            raise AnchorFileError(f"{path}:{number}: essay {essay!r} is anchored twice")
        anchors[essay] = score
    if not anchors:
        raise AnchorFileError(f"{path}: no anchors (expected rows of id,score)")
    return anchors


def check_anchors(anchors: Mapping[str, float], essay_ids: Collection[str], path: Path) -> None:
    """Every anchor must be one of the run's essays.

    Raises:
        AnchorFileError: naming the first few that are not.
    """
    missing = [essay for essay in anchors if essay not in essay_ids]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise AnchorFileError(f"{path}: anchors not among the essays: {shown}")
