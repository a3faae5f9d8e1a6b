"""Per-request work folders and the stale sweep, on a real temp folder."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import temp_cleaner

DAY = 86_400


@pytest.fixture(autouse=True)
def _fresh_clock():
    temp_cleaner.reset_sweep_clock()
    yield
    temp_cleaner.reset_sweep_clock()


def policy_for(root: Path, **overrides: int) -> temp_cleaner.TempPolicy:
    return temp_cleaner.TempPolicy(root=str(root), **overrides)


def age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp), follow_symlinks=False)


def make_entry(root: Path, name: str, seconds_old: float, folder: bool = True) -> Path:
    path = root / name
    if folder:
        path.mkdir(parents=True)
        (path / "download.dcm").write_bytes(b"x" * 1000)
    else:
        path.write_bytes(b"x" * 1000)
    age(path, seconds_old)
    return path


def test_workdir_is_named_by_request_id_and_removed_after_success(tmp_path: Path) -> None:
    policy = policy_for(tmp_path / "root")
    with temp_cleaner.workdir("req-123", policy) as folder:
        assert folder == tmp_path / "root" / "req-123"
        (folder / "file.dcm").write_bytes(b"data")
        (folder / "nested").mkdir()
        (folder / "nested" / "more").write_bytes(b"data")
    assert list((tmp_path / "root").iterdir()) == []


def test_workdir_is_removed_when_the_block_raises(tmp_path: Path) -> None:
    policy = policy_for(tmp_path)
    with pytest.raises(RuntimeError), temp_cleaner.workdir("req-err", policy) as folder:
        (folder / "partial").write_bytes(b"half")
        raise RuntimeError("render failed")
    assert list(tmp_path.iterdir()) == []


def test_workdir_replaces_a_leftover_of_the_same_request_id(tmp_path: Path) -> None:
    # Lambda retries asynchronous invocations with the same request id.
    leftover = make_entry(tmp_path, "retry-1", seconds_old=10)
    with temp_cleaner.workdir("retry-1", policy_for(tmp_path)) as folder:
        assert folder == leftover
        assert list(folder.iterdir()) == []
    assert not leftover.exists()


def test_request_ids_become_safe_folder_names(tmp_path: Path) -> None:
    policy = policy_for(tmp_path)
    with temp_cleaner.workdir("../../etc/passwd", policy) as folder:
        assert folder.parent == tmp_path
        assert folder.name == "etc-passwd"
    assert temp_cleaner.folder_name("...") == "request"
    assert temp_cleaner.folder_name("LV7fzho-PHcEJPw=") == "LV7fzho-PHcEJPw"


def test_sweep_removes_stale_entries_and_keeps_fresh_ones(tmp_path: Path) -> None:
    stale_dir = make_entry(tmp_path, "killed-invocation", seconds_old=DAY + 60)
    stale_file = make_entry(tmp_path, "orphan.dcm", seconds_old=2 * DAY, folder=False)
    fresh_dir = make_entry(tmp_path, "recent", seconds_old=DAY - 60)
    fresh_file = make_entry(tmp_path, "recent.dcm", seconds_old=5, folder=False)

    report = temp_cleaner.sweep(policy_for(tmp_path))

    assert report.removed == 2
    assert report.freed_bytes == 2000
    assert not stale_dir.exists() and not stale_file.exists()
    assert fresh_dir.exists() and fresh_file.exists()


def test_stale_age_is_configurable(tmp_path: Path) -> None:
    old = make_entry(tmp_path, "ten-minutes", seconds_old=600)
    young = make_entry(tmp_path, "one-minute", seconds_old=60)
    temp_cleaner.sweep(policy_for(tmp_path, stale_after_seconds=300))
    assert not old.exists()
    assert young.exists()


def test_sweep_runs_at_most_once_per_interval(tmp_path: Path) -> None:
    policy = policy_for(tmp_path, sweep_interval_seconds=300)
    now = time.time()
    assert temp_cleaner.maybe_sweep(policy, now=now) is not None
    stale = make_entry(tmp_path, "stale", seconds_old=2 * DAY)
    assert temp_cleaner.maybe_sweep(policy, now=now + 299) is None
    assert stale.exists()
    report = temp_cleaner.maybe_sweep(policy, now=now + 301)
    assert report is not None and report.reason == "interval" and report.removed == 1
    assert not stale.exists()


def test_workdir_sweeps_stale_leftovers_on_entry(tmp_path: Path) -> None:
    stale = make_entry(tmp_path, "old-request", seconds_old=3 * DAY)
    fresh = make_entry(tmp_path, "other-request", seconds_old=30)
    with temp_cleaner.workdir("new-request", policy_for(tmp_path)):
        assert not stale.exists()
        assert fresh.exists()


def test_low_free_space_sweeps_at_once_and_removes_idle_entries(tmp_path: Path) -> None:
    # A threshold above the disk's free space makes every check "low".
    huge = temp_cleaner.free_bytes(tmp_path) * 4 + 1
    policy = policy_for(tmp_path, min_free_bytes=huge, sweep_interval_seconds=3600)
    now = time.time()
    temp_cleaner.maybe_sweep(policy_for(tmp_path), now=now)  # the interval clock starts
    young_leftover = make_entry(tmp_path, "killed-a-minute-ago", seconds_old=60)

    report = temp_cleaner.maybe_sweep(policy, now=now + 1)

    assert report is not None and report.reason == "low_space"
    assert not young_leftover.exists()


def test_low_space_sweep_never_removes_a_folder_in_use(tmp_path: Path) -> None:
    huge = temp_cleaner.free_bytes(tmp_path) * 4 + 1
    policy = policy_for(tmp_path, min_free_bytes=huge)
    inside = threading.Event()
    release = threading.Event()
    seen: list[Path] = []

    def request() -> None:
        with temp_cleaner.workdir("busy", policy_for(tmp_path)) as folder:
            (folder / "download.dcm").write_bytes(b"x")
            seen.append(folder)
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=request)
    worker.start()
    try:
        assert inside.wait(5)
        temp_cleaner.sweep(policy)
        assert (seen[0] / "download.dcm").exists()
    finally:
        release.set()
        worker.join(5)
    assert not seen[0].exists()


def test_sweep_of_a_missing_root_is_harmless(tmp_path: Path) -> None:
    report = temp_cleaner.sweep(policy_for(tmp_path / "not-created"))
    assert report.removed == 0


def test_symlinks_are_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = tmp_path / "root"
    root.mkdir()
    link = root / "link"
    link.symlink_to(outside, target_is_directory=True)
    age(link, 2 * DAY)
    temp_cleaner.sweep(policy_for(root))
    assert not link.is_symlink()
    assert (outside / "keep.txt").read_text() == "keep"


def test_free_bytes_walks_up_to_an_existing_parent(tmp_path: Path) -> None:
    assert temp_cleaner.free_bytes(tmp_path / "a" / "b") == temp_cleaner.free_bytes(tmp_path)
