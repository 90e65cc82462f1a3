"""While the engine compiles for a job's shape (engine/compile.py), the bot says "warming up" instead of a step count:
the queue's warm-up event reaches the bot as a JobEvent and the status line shows it."""
from __future__ import annotations

from bot.embeds import StatusLine, status_text
from engine.job_status import JobStatus
from engine.queue import JobQueue
from tests.bot.test_service import make_service, request, store, db_url  # noqa: F401 (fixtures)


async def test_a_job_warming_up_is_told_to_the_bot_and_shown(store, tmp_path):  # noqa: F811
    queue = JobQueue()
    service = make_service(store, tmp_path, queue=queue)
    heard = []
    service.subscribe(heard.append)
    submitted = await service.submit(request(1))
    await queue.take(1, worker="cuda:0")
    queue.warm_up([submitted.job_id], True)
    warming = [e for e in heard if e.warming_up]
    assert [(e.job_id, e.status) for e in warming] == [(submitted.job_id, JobStatus.RUNNING)]
    queue.progress(submitted.job_id, 1, 20)              # the first step: compiled
    assert not queue.is_warming_up(submitted.job_id)
    line = status_text(submitted.job_id, "a red fox", StatusLine(JobStatus.RUNNING, elapsed_s=12.0, warming_up=True))
    assert "warming up" in line and "step" not in line
    after = status_text(submitted.job_id, "a red fox", StatusLine(JobStatus.RUNNING, step=1, total=20, elapsed_s=20.0))
    assert "step 1/20" in after and "warming" not in after
