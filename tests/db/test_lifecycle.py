"""A job's life: created queued, run, finished, with guarded state changes."""
from __future__ import annotations

from datetime import timezone

from db import jobs
from db.records import ImageFile, JobOutput

from tests.db.conftest import new_job

OUTPUT = JobOutput(seeds=[42, 43], images=[ImageFile("data/images/1_0.png", "ab" * 32),
                                           ImageFile("data/images/1_1.png", "cd" * 32)],
                   timings={"denoise": 7.5, "total": 9.1}, precision="dit=fp8/bf16", profile="streamed",
                   model_id="majicflus_v134@0123456789ab")


async def test_create_run_finish(store):
    job = await jobs.create_job(store, new_job(count=2, model_id="tiny-random@000000000000"))
    assert job.id >= 1 and job.status == "queued" and job.started_at is None
    assert job.created_at.tzinfo is not None and job.created_at.utcoffset().total_seconds() == 0

    assert await jobs.mark_running(store, job.id)
    running = await jobs.get_job(store, job.id)
    assert running.status == "running" and running.started_at >= job.created_at
    assert not await jobs.mark_running(store, job.id), "a job can be taken once"

    assert await jobs.finish_job(store, job.id, OUTPUT)
    done = await jobs.get_job(store, job.id)
    assert done.status == "done" and done.finished and not done.unfinished
    assert done.seeds == (42, 43)
    assert done.images == tuple(OUTPUT.images)
    assert done.timings == {"denoise": 7.5, "total": 9.1}
    assert (done.precision, done.profile, done.model_id) == ("dit=fp8/bf16", "streamed", "majicflus_v134@0123456789ab")
    assert done.finished_at.tzinfo == timezone.utc and done.finished_at >= done.started_at
    assert (done.prompt, done.seed, done.count, done.width, done.height, done.guidance) == \
        ("a red fox in snow", 42, 2, 1024, 1024, 3.5)


async def test_late_failure_or_cancel_never_overwrites_a_finished_job(store):
    job = await jobs.create_job(store, new_job())
    await jobs.mark_running(store, job.id)
    assert await jobs.finish_job(store, job.id, OUTPUT)

    assert not await jobs.fail_job(store, job.id, "CUDA out of memory")
    assert not await jobs.cancel_job(store, job.id)
    assert not await jobs.finish_job(store, job.id, JobOutput(seeds=[1], images=[]))
    after = await jobs.get_job(store, job.id)
    assert after.status == "done" and after.error is None and after.seeds == (42, 43)


async def test_failure_keeps_the_error_and_cannot_be_finished_later(store):
    job = await jobs.create_job(store, new_job())
    await jobs.mark_running(store, job.id)
    assert await jobs.fail_job(store, job.id, "model file missing: run `python -m bot download`")
    assert not await jobs.finish_job(store, job.id, OUTPUT)
    failed = await jobs.get_job(store, job.id)
    assert failed.status == "failed" and "python -m bot download" in failed.error and failed.images == ()


async def test_cancel_only_queued_or_running(store):
    queued = await jobs.create_job(store, new_job())
    running = await jobs.create_job(store, new_job())
    failed = await jobs.create_job(store, new_job())
    await jobs.mark_running(store, running.id)
    await jobs.fail_job(store, failed.id, "boom")

    assert await jobs.cancel_job(store, queued.id)
    assert await jobs.cancel_job(store, running.id)
    assert not await jobs.cancel_job(store, failed.id)
    assert not await jobs.cancel_job(store, queued.id), "cancelling twice changes nothing"
    assert not await jobs.mark_running(store, queued.id), "a cancelled job is never started"
    assert not await jobs.finish_job(store, running.id, OUTPUT), "a cancelled job's late result is dropped"
    assert [(await jobs.get_job(store, j.id)).status for j in (queued, running, failed)] == \
        ["cancelled", "cancelled", "failed"]


async def test_missing_job(store):
    assert await jobs.get_job(store, 999) is None
    assert not await jobs.mark_running(store, 999)
    assert not await jobs.set_message(store, 999, 1, 2)


async def test_requeue_after_restart(store):
    a = await jobs.create_job(store, new_job())
    b = await jobs.create_job(store, new_job())
    await jobs.mark_running(store, a.id)
    assert await jobs.requeue(store, a.id)
    assert not await jobs.requeue(store, b.id), "only running jobs go back"
    back = await jobs.get_job(store, a.id)
    assert back.status == "queued" and back.started_at is None


async def test_delivery_bookkeeping(store):
    job = await jobs.create_job(store, new_job(interaction_id=77, interaction_token="tok-secret",
                                               status_message_id=None))
    assert "tok-secret" not in repr(job), "the interaction token never shows in logs"
    assert await jobs.set_status_message(store, job.id, 3003)
    await jobs.mark_running(store, job.id)
    await jobs.finish_job(store, job.id, OUTPUT)
    assert [j.id for j in await jobs.undelivered_jobs(store)] == [job.id]
    assert await jobs.set_message(store, job.id, 5005, 6006)
    assert await jobs.mark_delivered(store, job.id)
    assert not await jobs.mark_delivered(store, job.id)
    assert await jobs.undelivered_jobs(store) == []
    assert await jobs.mark_deleted(store, job.id)
    assert not await jobs.mark_deleted(store, job.id)
    rec = await jobs.get_job(store, job.id)
    assert (rec.status_message_id, rec.result_channel_id, rec.result_message_id) == (3003, 5005, 6006)
    assert rec.delivered and rec.deleted and rec.interaction_id == 77
    assert rec.interaction_token is None, "delivered: the token is of no more use and is cleared"
    assert rec.status == "done", "deleting hides the message, the record stays"


async def test_lineage(store):
    parent = await jobs.create_job(store, new_job())
    child = await jobs.create_job(store, new_job(kind="vary", parent_id=parent.id, variation_seed=7,
                                                 variation_strength=0.3))
    got = await jobs.get_jobs(store, [parent.id, child.id, 12345])
    assert set(got) == {parent.id, child.id}
    assert got[child.id].parent_id == parent.id and got[child.id].variation_strength == 0.3


async def test_racing_finish_cancel_and_fail_have_exactly_one_winner(store):
    import asyncio
    made = [await jobs.create_job(store, new_job()) for _ in range(10)]
    for job in made:
        await jobs.mark_running(store, job.id)
    for job in made:
        won = await asyncio.gather(jobs.cancel_job(store, job.id), jobs.finish_job(store, job.id, OUTPUT),
                                   jobs.fail_job(store, job.id, "oom"))
        assert sum(won) == 1, f"exactly one state change may win, got {won}"
        final = await jobs.get_job(store, job.id)
        assert final.status == ("cancelled", "done", "failed")[won.index(True)]
