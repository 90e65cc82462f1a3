"""Stored input images follow their jobs' images: an input (`<images dir>/inputs/<sha256>.png`, shared by every job
that names it: an img2img job and its Rerolls, an Upscale) is deleted once no job needs it any more.

A job needs its input while it is unfinished (queued or running), while one of its PNGs is still on disk (done
jobs: `[storage]` retention prunes the PNGs, then the input goes at the same pass), and, for a job that made no
image (failed, cancelled), while it is younger than `[storage] max_image_age_days` (for ever without an age limit:
it may still be made again). An input no job names (an upload whose request was refused after it was stored) is
deleted too. 🗑 Delete removes a result's message only, never its files, so it keeps the input as it keeps the PNGs.
Inputs younger than `engine.image_files.LEFTOVER_AGE_S` are kept whatever the records say (a request being admitted
has stored its input but not yet written its job); a database that cannot be read deletes nothing.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from db.job_inputs import InputUse, input_uses
from engine.job_status import UNFINISHED, JobStatus
from engine.retention import PruneReport, prune_inputs

if TYPE_CHECKING:
    from db.session import Store

log = logging.getLogger(__name__)


def inputs_in_use(uses: Iterable[InputUse], *, max_age_days: float, now: datetime) -> set[str]:
    """The file names of the inputs some job still needs (see the module's rule). Reads the disk (PNGs)."""
    cutoff = now - timedelta(days=max_age_days) if max_age_days > 0 else None
    needed = set()
    for use in uses:
        if _needs_its_input(use, cutoff):
            needed.add(Path(use.input_image).name)
    return needed


def _needs_its_input(use: InputUse, cutoff: datetime | None) -> bool:
    if use.status in UNFINISHED:
        return True
    if use.status is JobStatus.DONE and use.images:
        return any(Path(p).is_file() for p in use.images)
    return cutoff is None or use.created_at >= cutoff


async def prune_stored_inputs(store: "Store", images_dir: str | Path, max_age_days: float) -> PruneReport:
    """One pass: the records first (an unreadable database raises, and nothing is deleted), then the files."""
    uses = await input_uses(store)
    now = datetime.now(timezone.utc)
    return await asyncio.to_thread(
        lambda: prune_inputs(images_dir, inputs_in_use(uses, max_age_days=max_age_days, now=now)))
