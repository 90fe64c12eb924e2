"""Row filters for run tables: ``COLUMN OP VALUE`` with ``OP`` one of ``= == != < <= > >=`` or ``in`` (a comma list).

Values compare as numbers when both sides parse as numbers (``4`` matches ``4.0``), else as strings. Several
filters combine with AND.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from isoflop.errors import IsoflopError, quote

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_PATTERN = re.compile(r"^\s*([^<>=!]+?)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")
_IN_PATTERN = re.compile(r"^\s*(\S+)\s+in\s+(.+?)\s*$")


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class RowFilter:
    """One condition on one column; ``values`` holds one value, or the set for ``in``."""

    column: str
    op: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        """``params<=4.2e8``, ``train_dataset=c4_original`` or ``chinchilla_multiplier in 20,320``."""
        m = _IN_PATTERN.match(text)
        if m:
            values = tuple(v.strip() for v in m.group(2).split(",") if v.strip())
            if values:
                return cls(m.group(1), "in", values)
        m = _PATTERN.match(text)
        if not m or not m.group(3):
            raise IsoflopError(
                f"--where {quote(text)} does not parse; use COLUMN=VALUE, COLUMN<=VALUE (also <, >, >=, !=) "
                "or 'COLUMN in A,B,C'"
            )
        column, op, value = m.groups()
        if op in ("<", "<=", ">", ">=") and _number(value) is None:
            raise IsoflopError(
                f"--where {quote(text)}: {op} needs a number, got {quote(value, 80)}; compare with a number, e.g. "
                f"params<=4.2e8"
            )
        return cls(column, op, (value,))

    def matches(self, cell: Any) -> bool:
        if self.op == "in":
            return any(_equal(cell, v) for v in self.values)
        if self.op in ("=", "=="):
            return _equal(cell, self.values[0])
        if self.op == "!=":
            return not _equal(cell, self.values[0])
        x = _number(cell)
        return x is not None and _OPS[self.op](x, float(self.values[0]))

    def __str__(self) -> str:
        return (
            f"{self.column} in {','.join(self.values)}"
            if self.op == "in"
            else f"{self.column}{self.op}{self.values[0]}"
        )


def _equal(cell: Any, value: str) -> bool:
    a, b = _number(cell), _number(value)
    if a is not None and b is not None:
        return a == b
    return str(cell) == value


def parse_filters(items: Sequence[str | RowFilter] | dict[str, str] | None) -> list[RowFilter]:
    """Filters from ``--where`` strings (or a ``{column: value}`` equality dict)."""
    if not items:
        return []
    if isinstance(items, dict):
        return [RowFilter(k, "=", (str(v),)) for k, v in items.items()]
    return [item if isinstance(item, RowFilter) else RowFilter.parse(item) for item in items]


def apply_filters(table: dict[str, list[Any]], filters: Sequence[RowFilter]) -> dict[str, list[Any]]:
    """The rows of ``table`` (columns of equal length) that satisfy every filter."""
    for f in filters:
        if f.column not in table:
            raise IsoflopError(
                f"filter column {quote(f.column, 80)} is not in the file; columns are: {', '.join(table)}"
            )
        keep = [f.matches(v) for v in table[f.column]]
        if not any(keep):
            seen = sorted({str(v) for v in table[f.column]})
            shown = ", ".join(seen[:12]) + (", ..." if len(seen) > 12 else "")
            raise IsoflopError(f"no row has {f}; values of {f.column} are: {shown}")
        table = {k: [v for v, ok in zip(vals, keep) if ok] for k, vals in table.items()}
    return table
