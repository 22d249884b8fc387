"""Markdown cells and tables shared by reports, ablation and sweep tables."""

from __future__ import annotations

from collections.abc import Sequence

MISSING = "–"


def fmt(value: float | None, std: float | None = None) -> str:
    """2-decimal number, `± std` when a std exists (≥ 2 seeds), `–` when missing."""
    if value is None:
        return MISSING
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
