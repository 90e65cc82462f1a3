"""Image retention: delete old PNGs under the images folder by age and by total size, oldest first, and the
temporary files a crash left beside them.

Only files the bot wrote are candidates (the naming rule is `engine.image_files`): `[<identity>-]<job id>.png`,
`[<identity>-]<job id>_<index>.png`, and `save_png`'s temporary `.<such a name>.<pid>.tmp` once it is older than
`LEFTOVER_AGE_S` (no write takes that long; a younger one may be a write in progress). Job records are never
touched (this module does not know the database); `/show` regenerates a pruned image from its record.
The bot calls `prune_images` every `[storage] prune_interval_min` with `[storage] max_image_age_days` and
`max_images_gib` (0 = no limit for either; crash leftovers are deleted all the same), then `prune_inputs`: the
stored input images (`<images dir>/inputs/<sha256>.png`) that no job needs any more, which the bot tells from its
records (bot/input_retention.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from engine.image_files import (LEFTOVER_AGE_S, inputs_dir, is_bot_image, is_input_image, is_input_leftover,
                                is_leftover)

log = logging.getLogger(__name__)

GIB = 1024 ** 3


@dataclass(frozen=True)
class PruneReport:
    """What one pruning pass did. `kept_bytes` is the size of the bot's PNGs left afterwards."""
    deleted: tuple[Path, ...]
    freed_bytes: int
    kept: int
    kept_bytes: int
    errors: tuple[str, ...] = ()
    leftovers: tuple[Path, ...] = ()  # temporary files of writes a crash interrupted, deleted

    def summary(self) -> str:
        text = (f"pruned {len(self.deleted)} images ({self.freed_bytes / 2**20:.1f} MiB); kept {self.kept} "
                f"({self.kept_bytes / 2**20:.1f} MiB)")
        if self.leftovers:
            text += f"; deleted {len(self.leftovers)} temporary file(s) left by a crash"
        return text + (f"; {len(self.errors)} could not be deleted" if self.errors else "")


@dataclass(frozen=True)
class _Image:
    path: Path
    size: int
    mtime: float


def prune_images(images_dir: str | os.PathLike, max_age_days: float, max_total_bytes: int,
                 now: float | None = None) -> PruneReport:
    """Delete the bot's PNGs older than `max_age_days`, then the oldest ones while the rest are larger than
    `max_total_bytes`. 0 (or less) disables either limit. Temporary files a crash left behind go whatever the
    limits. `now` is a Unix time (default: the clock)."""
    now = time.time() if now is None else now
    # 1. The bot's images, oldest first (ties broken by name, so that a pass is reproducible), and the leftovers.
    found, temporaries = _bot_files(Path(images_dir))
    images = sorted(found, key=lambda im: (im.mtime, im.path.name))
    leftovers = [t for t in temporaries if t.mtime < now - LEFTOVER_AGE_S]
    # 2. Choose: everything past the age limit, then the oldest until the size limit holds.
    doomed: list[_Image] = []
    keep = images
    if max_age_days > 0:
        cutoff = now - max_age_days * 86400
        doomed = [im for im in images if im.mtime < cutoff]
        keep = [im for im in images if im.mtime >= cutoff]
    if max_total_bytes > 0:
        total = sum(im.size for im in keep)
        while keep and total > max_total_bytes:
            oldest = keep.pop(0)
            doomed.append(oldest)
            total -= oldest.size
    # 3. Delete; a file that cannot be deleted is reported and counted as kept.
    deleted, errors, freed = [], [], 0
    for im in doomed:
        try:
            im.path.unlink()
        except FileNotFoundError:
            continue  # someone else removed it: nothing left to free
        except OSError as e:
            errors.append(f"{im.path}: {e.strerror}")
            keep.append(im)
            continue
        deleted.append(im.path)
        freed += im.size
    # 4. Crash leftovers (not counted as images: they were never finished).
    removed, leftover_errors = _unlink(list(leftovers))
    errors.extend(leftover_errors)
    report = PruneReport(tuple(deleted), freed, len(keep), sum(im.size for im in keep), tuple(errors),
                         tuple(removed))
    if deleted or errors or removed:
        (log.warning if errors else log.info)("%s", report.summary())
    for err in errors:
        log.warning("cannot delete %s", err)
    return report


def prune_inputs(images_dir: str | os.PathLike, in_use: Collection[str], now: float | None = None) -> PruneReport:
    """Delete the stored input images whose names are not `in_use` (the file names some job still needs), once
    they are older than `LEFTOVER_AGE_S` (a younger one may belong to a request being admitted), and the temporary
    files of input writes a crash left. `kept` counts the inputs left."""
    now = time.time() if now is None else now
    # 1. The stored inputs and leftovers (the folder only: inputs are never in subfolders).
    folder = inputs_dir(images_dir)
    inputs, leftovers = [], []
    for entry in (os.scandir(folder) if folder.is_dir() else ()):
        kind = inputs if is_input_image(entry.name) else leftovers if is_input_leftover(entry.name) else None
        if kind is None or entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            continue
        st = entry.stat(follow_symlinks=False)
        kind.append(_Image(Path(entry.path), st.st_size, st.st_mtime))
    # 2. What no job needs (and is not fresh), then the leftovers.
    doomed = [im for im in inputs if im.path.name not in in_use and im.mtime < now - LEFTOVER_AGE_S]
    deleted, errors = _unlink(doomed)
    removed, more_errors = _unlink([t for t in leftovers if t.mtime < now - LEFTOVER_AGE_S])
    gone = set(deleted)
    kept = [im for im in inputs if im.path not in gone]
    report = PruneReport(tuple(deleted), sum(im.size for im in doomed if im.path in gone), len(kept),
                         sum(im.size for im in kept), tuple(errors + more_errors), tuple(removed))
    if deleted or errors or removed:
        (log.warning if errors else log.info)("input images: %s", report.summary().replace(" images ", " inputs "))
    return report


def _unlink(files: list[_Image]) -> tuple[list[Path], list[str]]:
    deleted, errors = [], []
    for f in files:
        try:
            f.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            errors.append(f"{f.path}: {e.strerror}")
            continue
        deleted.append(f.path)
    return deleted, errors


async def prune_periodically(images_dir: str | os.PathLike, max_age_days: float, max_total_bytes: int,
                             interval_s: float, then: Callable[[], Awaitable[object]] | None = None) -> None:
    """Run `prune_images` in a thread now and every `interval_s` seconds until cancelled, each pass followed by
    `then()` (the bot's input pass). With both limits 0 it only deletes crash leftovers. A failing pass is logged
    and the next one still runs. The bot starts it with `asyncio.create_task(...)` and cancels the task when it
    closes."""
    if max_age_days <= 0 and max_total_bytes <= 0:
        log.info("image limits off ([storage] max_image_age_days and max_images_gib are 0): images are kept; only "
                 "temporary files left by a crash are deleted")
    while True:
        try:
            await asyncio.to_thread(prune_images, images_dir, max_age_days, max_total_bytes)
            if then is not None:
                await then()
        except Exception:  # noqa: BLE001  (one bad pass must not end retention for the bot's lifetime)
            log.exception("pruning %s failed; trying again in %.0f s", images_dir, interval_s)
        await asyncio.sleep(interval_s)


def _bot_files(root: Path) -> tuple[list[_Image], list[_Image]]:
    """The bot's images and the temporary files of its interrupted writes, under `root`."""
    images: list[_Image] = []
    temporaries: list[_Image] = []
    if not root.is_dir():
        return images, temporaries
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            kind = images if is_bot_image(name) else temporaries if is_leftover(name) else None
            if kind is None:
                continue
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if path.is_symlink():
                continue  # a link is not a file the bot wrote
            kind.append(_Image(path, st.st_size, st.st_mtime))
    return images, temporaries
