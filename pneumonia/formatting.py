"""Numbers as the reports print them (markdown tables, sentences): "n/a" for an undefined value,
fixed decimals, and p-values that never read "0.000"."""

from __future__ import annotations

import math


def number(v: float | None, digits: int = 3, sign: bool = False) -> str:
    """`0.912` (`+0.012` with `sign`); "n/a" for None, NaN or infinity."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def p_value(v: float | None) -> str:
    """A p-value in a table: `0.020`, `< 0.001`, "n/a" when undefined."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def p_value_phrase(v: float | None) -> str:
    """A p-value in a sentence: "= 0.020", "< 0.001" (never "= 0.000")."""
    text = p_value(v)
    return text if text.startswith("<") else f"= {text}"
