"""Per-request work folders under one temp root, and the sweep that keeps /tmp clean.

Lambda keeps an execution environment's ``/tmp`` between invocations, and an
invocation that times out is killed without running any ``finally``. So two
mechanisms work together:

* ``workdir(request_id, policy)`` gives each request its own folder and removes
  it when the request ends, on success and on every error;
* a sweep removes entries under the root that are older than
  ``policy.stale_after_seconds`` (STALE_AFTER_SECONDS, 24 h by default). It runs at
  most once every ``sweep_interval_seconds``, and at once whenever free space falls
  below ``min_free_bytes`` (MIN_FREE_TMP_BYTES). Leftovers of killed invocations are
  what it is for.

When free space stays low after the stale sweep, it also removes entries that
no request of this process is using: a killed invocation's folder is young but
will never be used again, and one environment runs one request at a time.

This module receives a ``TempPolicy``; the entry points derive it from the settings.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("dicom_lambda.temp")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")

_lock = threading.Lock()
_last_sweep: float | None = None
# Work folders in use by requests of this process; never swept.
_active: set[Path] = set()


@dataclass(frozen=True)
class TempPolicy:
    """Where work folders live, and when the sweep runs and what it removes."""

    root: str = "/tmp/dicom-lambda"
    sweep_interval_seconds: int = 300
    stale_after_seconds: int = 86_400
    min_free_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class SweepReport:
    removed: int
    freed_bytes: int
    free_bytes: int
    reason: str


def folder_name(request_id: str) -> str:
    """A file-system-safe folder name for a request id."""
    name = _SAFE_NAME.sub("-", request_id).strip(".-")[:128]
    return name or "request"


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    target = Path(path)
    while not target.exists() and target != target.parent:
        target = target.parent
    return shutil.disk_usage(target).free


@contextmanager
def workdir(request_id: str, policy: TempPolicy) -> Iterator[Path]:
    """A private folder for one request, removed when the block ends, however it ends."""
    root = Path(policy.root)
    root.mkdir(parents=True, exist_ok=True)
    maybe_sweep(policy)
    path = root / folder_name(request_id)
    # Lambda retries an asynchronous invocation with the same request id; a
    # killed first attempt may have left this folder behind.
    _remove(path)
    path.mkdir()
    with _lock:
        _active.add(path)
    try:
        yield path
    finally:
        with _lock:
            _active.discard(path)
        _remove(path)


def maybe_sweep(policy: TempPolicy, now: float | None = None) -> SweepReport | None:
    """Sweep when the interval has passed or free space is low; otherwise do nothing."""
    global _last_sweep
    now = time.time() if now is None else now
    root = Path(policy.root)
    low_space = free_bytes(root) < policy.min_free_bytes
    with _lock:
        due = _last_sweep is None or now - _last_sweep >= policy.sweep_interval_seconds
        if not (due or low_space):
            return None
        _last_sweep = now
    return sweep(policy, now=now, reason="low_space" if low_space else "interval")


def sweep(policy: TempPolicy, now: float | None = None, reason: str = "manual") -> SweepReport:
    """Remove stale entries under the temp root; under low space, every idle entry."""
    now = time.time() if now is None else now
    root = Path(policy.root)
    removed, freed = _remove_entries(root, lambda age: age > policy.stale_after_seconds, now)
    free = free_bytes(root)
    if free < policy.min_free_bytes:
        more, more_freed = _remove_entries(root, lambda age: True, now)
        removed, freed = removed + more, freed + more_freed
        free = free_bytes(root)
        if free < policy.min_free_bytes:
            logger.warning(
                "temp space still low after sweep",
                extra={"fields": {"free_bytes": free, "min_free_bytes": policy.min_free_bytes}},
            )
    report = SweepReport(removed=removed, freed_bytes=freed, free_bytes=free, reason=reason)
    if removed:
        logger.info("temp sweep", extra={"fields": report.__dict__})
    return report


def _remove_entries(
    root: Path, should_remove: Callable[[float], bool], now: float
) -> tuple[int, int]:
    """Remove idle entries of `root` whose age in seconds satisfies `should_remove`."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0, 0
    with _lock:
        active = set(_active)
    removed = freed = 0
    for entry in entries:
        path = Path(entry.path)
        if path in active:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        if should_remove(age):
            size = _size(path)
            if _remove(path):
                removed += 1
                freed += size
    return removed, freed


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        try:
            return path.lstat().st_size
        except OSError:
            return 0
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _remove(path: Path) -> bool:
    """Remove a file, link or folder tree; True if something was removed."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning(
            "could not remove temp entry",
            extra={"fields": {"entry": path.name, "error": type(exc).__name__}},
        )
        return False
    return True


def reset_sweep_clock() -> None:
    """Forget when the last sweep ran, so the next request sweeps (used by tests)."""
    global _last_sweep
    with _lock:
        _last_sweep = None
