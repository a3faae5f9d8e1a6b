"""A process-wide audit hook that keeps adversarial tests on loopback.

``GUARD.active`` is switched on by the adversarial test modules around each test.
While it is on, every ``socket.connect`` is recorded in ``GUARD.connects``, and any
connection or name lookup aimed outside 127.0.0.0/8 and ::1 is refused with a
``RuntimeError`` and recorded in ``GUARD.violations``. Nothing is replaced or
mocked: the hook only watches, and stops what would leave this machine.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def _is_loopback(host: Any) -> bool:
    if host in (None, "", b"", "localhost", b"localhost"):
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@dataclass
class LoopbackGuard:
    """Records connections and name lookups; refuses any that would leave loopback.

    Audit hooks cannot be removed, so the hook is installed once, at import, and
    does nothing outside ``watching()``.
    """

    active: bool = False
    connects: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "socket.connect":
            address = args[1]
            if not isinstance(address, tuple):
                return  # a Unix socket
            self.connects.append(f"{address[0]}:{address[1]}")
            if not _is_loopback(address[0]):
                self._refuse(f"connect to {address[0]}")
        elif event in ("socket.getaddrinfo", "socket.gethostbyname") and not _is_loopback(args[0]):
            self._refuse(f"name lookup of {args[0]!r}")

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Watch (and clear the records of) one test."""
        self.connects.clear()
        self.violations.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def _refuse(self, what: str) -> None:
        self.violations.append(what)
        # RuntimeError, not OSError: no library turns it into a quiet retry.
        raise RuntimeError(f"adversarial tests stay on loopback: refused {what}")


GUARD = LoopbackGuard()
sys.addaudithook(GUARD.hook)
