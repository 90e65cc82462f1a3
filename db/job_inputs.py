"""Which jobs name a stored input image (img2img, 🔍 Upscale): what input retention (bot/input_retention.py) reads to
tell the inputs some job still needs from the ones no job needs any more. Reading only."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from db.models import Job
from db.session import Store
from engine.job_status import JobStatus


@dataclass(frozen=True)
class InputUse:
    """One job's use of a stored input: the input's path as the job recorded it, and what became of the job."""
    job_id: int
    input_image: str
    status: JobStatus
    created_at: datetime
    images: tuple[str, ...]          # the job's PNG paths (done jobs)


async def input_uses(store: Store) -> list[InputUse]:
    """Every job that names an input image, oldest first."""
    query = (select(Job.id, Job.input_image, Job.status, Job.created_at, Job.images)
             .where(Job.input_image.is_not(None)).order_by(Job.id))
    async with store.session() as s:
        rows = (await s.execute(query)).all()
    return [InputUse(job_id=r.id, input_image=r.input_image, status=JobStatus(r.status), created_at=r.created_at,
                     images=tuple(str(i["path"]) for i in (r.images or ()) if isinstance(i, dict) and "path" in i))
            for r in rows]
