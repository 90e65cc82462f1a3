"""Image pruning by age and size: oldest first, only the bot's own PNG names."""
from __future__ import annotations

import os
from pathlib import Path

from engine.retention import prune_images

DAY = 86400
NOW = 1_800_000_000.0


def _png(folder: Path, name: str, size: int, age_days: float) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG" + b"\0" * (size - 4))
    t = NOW - age_days * DAY
    os.utime(path, (t, t))
    return path


def test_age_limit_deletes_only_images_older_than_it(tmp_path):
    old = _png(tmp_path, "1.png", 100, 10)
    new = _png(tmp_path, "2_0.png", 100, 1)
    report = prune_images(tmp_path, max_age_days=7, max_total_bytes=0, now=NOW)
    assert report.deleted == (old,) and not old.exists() and new.exists()
    assert (report.freed_bytes, report.kept, report.kept_bytes) == (100, 1, 100)


def test_size_limit_deletes_oldest_first_until_it_fits(tmp_path):
    a = _png(tmp_path, "10.png", 400, 5)
    b = _png(tmp_path, "11_0.png", 400, 4)
    c = _png(tmp_path, "11_1.png", 400, 3)
    d = _png(tmp_path, "12.png", 400, 2)
    report = prune_images(tmp_path, max_age_days=0, max_total_bytes=1000, now=NOW)
    assert report.deleted == (a, b)
    assert [p.exists() for p in (a, b, c, d)] == [False, False, True, True]
    assert report.kept_bytes == 800


def test_files_the_bot_did_not_write_are_never_touched(tmp_path):
    foreign = [_png(tmp_path, n, 1000, 100) for n in ("cat.png", "1.jpg", "1_a.png", "12.PNG", "notes.txt",
                                                       "fluxbot.db")]
    link = tmp_path / "99.png"
    link.symlink_to(foreign[0])
    mine = _png(tmp_path / "2026-11", "7.png", 1000, 100)  # subfolders are searched too
    report = prune_images(tmp_path, max_age_days=1, max_total_bytes=1, now=NOW)
    assert report.deleted == (mine,)
    assert all(p.exists() for p in foreign) and link.is_symlink()


def test_no_limits_and_a_missing_folder_delete_nothing(tmp_path):
    kept = _png(tmp_path, "5.png", 100, 1000)
    assert prune_images(tmp_path, 0, 0, now=NOW).deleted == () and kept.exists()
    report = prune_images(tmp_path / "absent", 1, 1, now=NOW)
    assert (report.deleted, report.kept) == ((), 0)


def test_both_limits_together(tmp_path):
    old = _png(tmp_path, "1.png", 100, 30)
    mid = _png(tmp_path, "2.png", 600, 5)
    new = _png(tmp_path, "3.png", 600, 1)
    report = prune_images(tmp_path, max_age_days=14, max_total_bytes=1000, now=NOW)
    assert set(report.deleted) == {old, mid} and new.exists()
    assert "pruned 2 images" in report.summary()


async def test_periodic_pruning_keeps_running_until_cancelled(tmp_path):
    import asyncio
    import time

    from engine.retention import prune_periodically

    task = asyncio.create_task(prune_periodically(tmp_path, max_age_days=1, max_total_bytes=0, interval_s=0.01))
    first = _png(tmp_path, "1.png", 10, 0)
    os.utime(first, (time.time() - 2 * DAY,) * 2)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not first.exists():
            break
    second = _png(tmp_path, "2.png", 10, 0)  # a later image, also old: the next pass takes it too
    os.utime(second, (time.time() - 2 * DAY,) * 2)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not second.exists():
            break
    task.cancel()
    assert not first.exists() and not second.exists()


async def test_without_limits_periodic_pruning_keeps_images_and_removes_crash_leftovers(tmp_path):
    import asyncio
    import time

    from engine.retention import prune_periodically

    image = _png(tmp_path, "5.png", 100, 1000)
    leftover = _png(tmp_path, ".5_1.png.4242.tmp", 100, 0)
    os.utime(leftover, (time.time() - DAY,) * 2)
    task = asyncio.create_task(prune_periodically(tmp_path, 0, 0, interval_s=0.01))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not leftover.exists():
            break
    task.cancel()
    assert image.exists() and not leftover.exists()


def test_temporary_files_left_by_a_crash_mid_write_are_deleted(tmp_path):
    # `save_png` writes `.<name>.<pid>.tmp` and renames it; SIGKILL in between leaves it (measured size: a
    # 1024² noise PNG is ~3 MiB, so a crash loop would fill the disk with them).
    old = [_png(tmp_path, n, 3000, 1) for n in (".7.png.123.tmp", ".1a2b3c4d-8_0.png.99.tmp")]
    writing = _png(tmp_path, ".9.png.123.tmp", 3000, 0)  # a write in progress right now: kept
    foreign = [_png(tmp_path, n, 10, 1) for n in (".cat.png.1.tmp", "7.png.tmp", ".fluxbot-job-ids.json.tmp")]
    report = prune_images(tmp_path, max_age_days=0, max_total_bytes=0, now=NOW)
    assert set(report.leftovers) == set(old) and not any(p.exists() for p in old)
    assert writing.exists() and all(p.exists() for p in foreign)
    assert report.deleted == () and "left by a crash" in report.summary()


def test_names_with_a_database_identity_are_the_bots_too(tmp_path):
    mine = [_png(tmp_path, n, 100, 10) for n in ("1a2b3c4d-7.png", "1a2b3c4d-8_1.png")]
    foreign = [_png(tmp_path, n, 100, 10) for n in ("1A2B3C4D-7.png", "xyz-7.png", "1a2b3c4d-.png")]
    report = prune_images(tmp_path, max_age_days=1, max_total_bytes=0, now=NOW)
    assert set(report.deleted) == set(mine) and all(p.exists() for p in foreign)
