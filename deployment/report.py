"""Step-by-step progress of a run, and the record of every change it made or planned."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One resource the run looked at: ``status`` is "unchanged", or the change's verb."""

    what: str
    status: str
    detail: str = ""


class Report:
    """Prints progress; in a dry run every change reads "would be ..."."""

    def __init__(self, total_steps: int, dry_run: bool) -> None:
        self.total = total_steps
        self.current = 0
        self.dry_run = dry_run
        self.entries: list[Entry] = []

    @property
    def changes(self) -> int:
        return sum(1 for entry in self.entries if entry.status != "unchanged")

    def step(self, title: str) -> None:
        self.current += 1
        print(f"[{self.current}/{self.total}] {title}", flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def unchanged(self, what: str, detail: str = "") -> None:
        self.entries.append(Entry(what, "unchanged", detail))
        self.note(f"{what}: unchanged{_paren(detail)}")

    def changed(self, what: str, verb: str, detail: str = "") -> None:
        self.entries.append(Entry(what, verb, detail))
        status = f"would be {verb}" if self.dry_run else verb
        self.note(f"{what}: {status}{_paren(detail)}")

    def apply(self, what: str, verb: str, action: Callable[[], T], detail: str = "") -> T | None:
        """Run a change, or in a dry run only say what it would be."""
        if self.dry_run:
            self.changed(what, verb, detail)
            return None
        result = action()
        self.changed(what, verb, detail)
        return result


def _paren(detail: str) -> str:
    return f" ({detail})" if detail else ""


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
