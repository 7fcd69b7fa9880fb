"""Collection of data problems, raised together as one :class:`DataError` naming file, place and fix.

A place is a line number (``train.csv line 3``; the header of a CSV is line 1) or, where a format has no
lines worth naming (a COCO JSON), a short locator such as ``annotations[4] (id 17)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from pipeline.errors import DataError

# How many problems one error message lists before it says "... and N more".
MAX_LISTED = 10


class Problems:
    """Collects problems (file, line or locator, text) and raises them as one :class:`DataError`.

    Only the first few problems of each call are formatted (the rest are counted), so a file where every
    row is wrong still fails fast with a short message. Hints ("What to do") are listed once each.
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, int, str, str]] = []  # (file, line, locator, message); line 0 = no line
        self._count = 0
        self._hints: list[str] = []

    def __bool__(self) -> bool:
        return self._count > 0

    def __len__(self) -> int:
        return self._count

    def add(self, file: Path | str, line: int | None, message: str, hint: str | None = None,
            at: str = "") -> None:
        self._items.append((str(file), int(line or 0), str(at or ""), message))
        self._count += 1
        self._hint(hint)

    def add_rows(self, file, lines: Sequence[int], messages: Iterable[str] | None = None,
                 message: str | None = None, hint: str | None = None, at: Sequence[str] | None = None) -> None:
        """One problem per row. ``file`` is one path or a sequence aligned with ``lines`` (rows from many
        files); ``messages`` (lazily formatted, aligned) or one ``message``; ``at``: optional locators."""
        lines = list(lines)
        if not lines:
            return
        files = [str(file)] * len(lines) if isinstance(file, (str, Path)) else [str(f) for f in list(file)]
        ats = list(at) if at is not None else [""] * len(lines)
        it = iter(messages) if messages is not None else None
        for i in range(min(len(lines), MAX_LISTED)):
            text = next(it) if it is not None else str(message)
            self._items.append((files[i], int(lines[i] or 0), str(ats[i] or ""), text))
        self._count += len(lines)
        self._hint(hint)

    def _hint(self, hint: str | None) -> None:
        if hint and hint not in self._hints:
            self._hints.append(hint)

    def message(self) -> str:
        items = sorted(self._items, key=lambda t: (t[0], t[1]))[:MAX_LISTED]
        n = self._count
        head = f"{n} problem{'s' if n != 1 else ''} in the input data"
        out = [head + (f" (first {len(items)} shown):" if n > len(items) else ":")]
        for file, line, at, msg in items:
            where = f"{file} {at}" if at else f"{file} line {line}" if line else file
            out.append(f"  {where}: {msg}")
        if n > len(items):
            out.append(f"  ... and {n - len(items)} more problem{'s' if n - len(items) != 1 else ''}")
        if self._hints:
            out.append("What to do:")
            out.extend(f"  - {h}" for h in self._hints)
        return "\n".join(out)

    def raise_if_any(self) -> None:
        if self._count:
            raise DataError(self.message())
