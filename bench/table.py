"""Fixed-width text tables for the benchmark scripts' results: one header, one line per row."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column: its title and width, the format of its numbers (a format spec without
    the width, e.g. ".3f" or ",.0f"), left- or right-aligned, and text written right after
    each value (e.g. "x" for a ratio). A value given as text is written as it is, and a
    missing value (None) as "-"."""

    title: str
    width: int
    spec: str = ""
    left: bool = False
    suffix: str = ""

    def head(self) -> str:
        """The title, aligned in the column's width."""
        return f"{self.title:{self._align}{self.width}}"

    def cell(self, value: object) -> str:
        """One value, formatted and aligned in the column's width, then the suffix."""
        if value is None:
            value = "-"
        spec = "" if isinstance(value, str) else self.spec
        return f"{value:{self._align}{self.width}{spec}}{self.suffix}"

    @property
    def _align(self) -> str:
        return "<" if self.left else ">"


@dataclass(frozen=True)
class Table:
    """Columns side by side, with no space between them beyond their widths."""

    columns: tuple[Column, ...]

    def header(self) -> str:
        """The line of titles."""
        return "".join(column.head() for column in self.columns)

    def line(self, values: Sequence[object]) -> str:
        """One row: a value per column, in the columns' order."""
        return "".join(c.cell(v) for c, v in zip(self.columns, values, strict=True))

    def text(self, rows: Iterable[Sequence[object]]) -> str:
        """The header, then a line per row."""
        return "\n".join([self.header(), *(self.line(values) for values in rows)])
