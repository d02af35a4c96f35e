"""Markdown pipe tables from data frames: the report's and the reproduce table's.

Light: it only reads the frame it is given, so a caller pays for pandas, not for plotting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def markdown(frame: pd.DataFrame, left: Sequence[str] = ("run", "model")) -> str:
    """A pipe table: the `left` (text) columns left-aligned, the others right-aligned."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if c in left else "---:" for c in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, v)) + " |" for v in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
