"""The jobs service: admission, fair order, cancel, restart recovery, and (with the real tiny engine) the
whole path from submit to a saved PNG."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bot.config import LimitsSettings
from bot.admission_errors import (BannedWord, CoolingDown, EmptyPrompt, GuildQueueFull, PromptTooLong, QueueFull,
                                  ShuttingDown, TooManyImages, TooManyUnfinished)
from bot.job_types import CancelOutcome, NewRequest
from bot.service import JobService
from db import jobs
from db.records import JobOutput
from db.session import open_store
from engine.queue import JobQueue
from engine.spec import JobSpec

LIMITS = LimitsSettings(max_unfinished_per_user=3, cooldown_s=0.0, queue_cap=100, max_prompt_chars=200,
                        max_count=4)


def request(user_id: int, prompt: str = "a red fox in snow", **spec_kw) -> NewRequest:
    values = dict(seed=7, steps=1, width=64, height=64)
    values.update(spec_kw)
    return NewRequest(user_id=user_id, spec=JobSpec(prompt, **values), guild_id=1, channel_id=2)


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'fluxbot.db'}"


@pytest.fixture
async def store(db_url):
    s = await open_store(db_url)
    yield s
    await s.close()


def make_service(store, tmp_path, *, limits=LIMITS, banned=(), workers=None, queue=None) -> JobService:
    queue = JobQueue() if queue is None else queue  # an empty JobQueue is falsy (len 0): no `queue or ...`
    return JobService(store, queue, workers or [], limits, list(banned), tmp_path / "images")


async def test_prompt_checks_refuse_before_anything_is_written(store, tmp_path):
    service = make_service(store, tmp_path, banned=["nude"])
    with pytest.raises(EmptyPrompt, match="empty"):
        await service.submit(request(1, "   "))
    with pytest.raises(PromptTooLong, match="limit is 200"):
        await service.submit(request(1, "x" * 201))
    with pytest.raises(BannedWord, match="rephrase"):
        await service.submit(request(1, "A Nüde statue"))
    with pytest.raises(TooManyImages, match="At most 4"):
        await service.submit(request(1, count=5))
    assert await jobs.count_unfinished(store) == 0 and len(service.queue) == 0


# --- admission from the store ---------------------------------------------------------------------------

async def test_fair_order_across_users_and_resolved_seed(store, tmp_path):
    service = make_service(store, tmp_path)
    subs = [await service.submit(request(user, seed=None)) for user in (10, 20, 10, 30)]
    # user 10's second job waits for user 30's first (round-robin across users, FIFO within one)
    assert [s.position for s in subs] == [1, 2, 3, 3]
    assert [j.job_id for j in service.queue.waiting()] == [subs[i].job_id for i in (0, 1, 3, 2)]
    row = await jobs.get_job(store, subs[0].job_id)
    assert row.status == "queued" and row.seed == subs[0].seed >= 0 and row.prompt == "a red fox in snow"


async def test_per_user_limit_and_cooldown_hold_across_a_restart(db_url, tmp_path):
    limits = replace(LIMITS, max_unfinished_per_user=2, cooldown_s=60.0)
    # 1. first life: user 1 asks once, then too soon again
    store = await open_store(db_url)
    service = make_service(store, tmp_path, limits=limits)
    await service.submit(request(1))
    with pytest.raises(CoolingDown) as cooling:
        await service.submit(request(1))
    assert 55 < cooling.value.retry_after_s <= 60
    await store.close()
    # 2. second life over the same file: the cooldown still holds, another user is fine
    store = await open_store(db_url)
    service = make_service(store, tmp_path, limits=limits)
    with pytest.raises(CoolingDown, match="wait"):
        await service.submit(request(1))
    await service.submit(request(2))
    await store.close()
    # 3. without the cooldown, the unfinished limit (2) is counted from the rows
    store = await open_store(db_url)
    service = make_service(store, tmp_path, limits=replace(limits, cooldown_s=0.0))
    await service.submit(request(1))
    with pytest.raises(TooManyUnfinished, match="2 unfinished"):
        await service.submit(request(1))
    assert (await service.submit(replace(request(1), exempt=True))).job_id  # admins are exempt
    await store.close()


async def test_queue_cap_refuses_everyone(store, tmp_path):
    service = make_service(store, tmp_path, limits=replace(LIMITS, queue_cap=2))
    await service.submit(request(1))
    await service.submit(request(2))
    with pytest.raises(QueueFull, match="full"):
        await service.submit(request(3))


async def test_guild_cap_counts_each_guilds_unfinished_jobs_and_dms_as_one(store, tmp_path):
    service = make_service(store, tmp_path, limits=replace(LIMITS, max_unfinished_per_guild=2))
    in_guild = lambda user, guild: replace(request(user), guild_id=guild)  # noqa: E731
    first = await service.submit(in_guild(1, 100))
    await service.submit(in_guild(2, 100))
    before = await jobs.count_unfinished(store)
    # 1. A third job of guild 100, from anyone (an admin too), is refused; nothing is written.
    for refused in (in_guild(3, 100), replace(in_guild(3, 100), exempt=True)):
        with pytest.raises(GuildQueueFull, match="This server has 2 unfinished job.s. already .the limit is 2."):
            await service.submit(refused)
    assert await jobs.count_unfinished(store) == before
    # 2. Another guild and DMs have their own share; DMs together are one.
    await service.submit(in_guild(3, 200))
    await service.submit(in_guild(4, None))
    await service.submit(in_guild(5, None))
    with pytest.raises(GuildQueueFull, match="Direct messages with this bot have 2"):
        await service.submit(in_guild(6, None))
    # 3. A finished job frees its place; an owner allowed by [limits] owners_skip_queue_caps passes the cap.
    await service.cancel(first.job_id)
    await service.submit(in_guild(3, 100))
    assert (await service.submit(replace(in_guild(7, 100), skips_queue_caps=True))).job_id


async def test_only_a_request_marked_skips_queue_caps_passes_the_global_cap(store, tmp_path):
    service = make_service(store, tmp_path, limits=replace(LIMITS, queue_cap=1))
    await service.submit(request(1))
    with pytest.raises(QueueFull):
        await service.submit(replace(request(2), exempt=True))  # admins: exempt from per-user limits only
    assert (await service.submit(replace(request(2), skips_queue_caps=True))).position == 2


async def test_a_request_during_shutdown_is_kept_for_the_next_start(store, tmp_path):
    service = make_service(store, tmp_path)
    service.queue.close()
    with pytest.raises(ShuttingDown, match="saved"):
        await service.submit(request(1))
    assert [j.status for j in await jobs.unfinished_jobs(store)] == ["queued"]


# --- cancel and recovery without workers ----------------------------------------------------------------

async def test_cancel_queued_jobs_leave_the_queue_once(store, tmp_path):
    service = make_service(store, tmp_path)
    events = []
    service.subscribe(events.append)
    a, b, c = [await service.submit(request(u)) for u in (1, 2, 3)]
    assert await service.cancel(a.job_id) is CancelOutcome.CANCELLED
    assert await service.cancel(b.job_id) is CancelOutcome.CANCELLED
    assert await service.cancel(a.job_id) is CancelOutcome.ALREADY_FINISHED
    assert await service.cancel(12345) is CancelOutcome.NOT_FOUND
    assert (await jobs.get_job(store, a.job_id)).status == "cancelled"
    assert service.queue.position(c.job_id) == 1
    assert [e.job_id for e in events if said(e) == "cancelled"] == [a.job_id, b.job_id]
    assert [e.position for e in events if said(e) == "queued" and e.job_id == c.job_id] == [3, 2, 1]


async def test_recover_requeues_queued_and_running_jobs_in_their_order(db_url, tmp_path):
    store = await open_store(db_url)
    service = make_service(store, tmp_path)
    ids = [(await service.submit(request(u))).job_id for u in (1, 2, 3, 4)]
    assert await jobs.mark_running(store, ids[0])       # it was running when the bot stopped
    await jobs.finish_job(store, ids[1], JobOutput(seeds=[7], images=[]))  # this one had finished
    await store.close()

    store = await open_store(db_url)
    service = make_service(store, tmp_path)
    recovered = await service.recover()
    assert [j.id for j in recovered] == [ids[0], ids[2], ids[3]]
    assert [j.job_id for j in service.queue.waiting()] == [ids[0], ids[2], ids[3]]
    assert (await jobs.get_job(store, ids[0])).status == "queued"
    assert await service.recover() == []  # twice is harmless
    await store.close()


async def test_a_recovered_show_job_asks_for_the_recipe_of_the_job_it_makes_again(db_url, tmp_path):
    """/show of a pruned image queues the job with its stored engine recipe (bot/job_types.py's `remade`); after a
    restart it must ask for it again, or it would run the engine's own recipe with other pixels."""
    recipe = {"fp8": "all-linear", "compute": "bf16", "compile": False, "torch": "2.13.0", "diffusers": "0.42.1",
              "device": "cpu x86_64"}
    store = await open_store(db_url)
    service = make_service(store, tmp_path)
    shown = (await service.submit(request(1))).job_id
    await jobs.finish_job(store, shown, JobOutput(seeds=[7], images=[], recipe=recipe))
    again = await service.submit(replace(request(1), kind="show", parent_id=shown))
    await store.close()

    store = await open_store(db_url)
    service = make_service(store, tmp_path)
    assert [j.id for j in await service.recover()] == [again.job_id]
    assert service.queue.waiting()[0].spec.recipe == recipe
    await store.close()


async def test_recover_rebuilds_the_fair_order_not_the_arrival_order(db_url, tmp_path):
    store = await open_store(db_url)
    service = make_service(store, tmp_path)
    for user in (1, 1, 1, 2, 3, 3):  # user 1 sent three jobs before users 2 and 3 came
        await service.submit(request(user))
    before = [j.job_id for j in service.queue.waiting()]
    await store.close()

    store = await open_store(db_url)
    service = make_service(store, tmp_path)
    await service.recover()
    after = [j.job_id for j in service.queue.waiting()]
    assert after == before == [1, 4, 5, 2, 6, 3]
    await store.close()


# --- with the real tiny engine -----------------------------------------------------------------------------

SIZE = 256  # the engine's smallest size


def said(event) -> str:
    """What a JobEvent says, in words: its status (engine.job_status), or "progress" for a running job's step report."""
    return "progress" if event.progress else event.status.value


class Events:
    """Collects JobEvents and lets a test wait for a number of final outcomes."""

    def __init__(self, service: JobService):
        self.items: list = []
        self._final = asyncio.Condition()
        service.subscribe(self.hear)

    async def hear(self, event):
        self.items.append(event)
        if event.status.finished:
            async with self._final:
                self._final.notify_all()

    def final(self) -> dict[int, str]:
        return {e.job_id: said(e) for e in self.items if e.status.finished}

    async def wait_final(self, count: int, timeout: float = 60.0):
        async def enough():
            async with self._final:
                await self._final.wait_for(lambda: len(self.final()) >= count)
        await asyncio.wait_for(enough(), timeout)

    def of(self, job_id, kind):
        return [e for e in self.items if e.job_id == job_id and said(e) == kind]


def running_service(store, tmp_path, engine, *, limits=LIMITS, workers=1, engines=None):
    from engine.worker import Worker

    queue = JobQueue(workers=workers)
    service = make_service(store, tmp_path, limits=limits, queue=queue)
    for i, e in enumerate(engines or [engine] * workers):
        service.workers.append(Worker(f"cpu#{i}", e, queue, service))
    return service


async def stop(service):
    for w in service.workers:
        await w.stop(close_engine=False)


def pixels(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


async def test_submit_runs_and_saves_the_png_by_job_id(store, tmp_path, tiny_engine):
    import hashlib

    from engine.png import read_png_params

    service = running_service(store, tmp_path, tiny_engine)
    events = Events(service)
    one = await service.submit(request(1, "a lighthouse", width=SIZE, height=SIZE, steps=2))
    two = await service.submit(request(2, "a ../../etc/passwd", width=SIZE, height=SIZE, count=2, seed=None))
    for w in service.workers:
        w.start()
    await events.wait_final(2)
    await stop(service)
    # 1. rows and files
    row = await jobs.get_job(store, one.job_id)
    assert row.status == "done" and row.started_at is not None and row.model_id == tiny_engine.model_id
    assert [i.path for i in row.images] == [str(tmp_path / "images" / f"{one.job_id}.png")]
    assert hashlib.sha256(open(row.images[0].path, "rb").read()).hexdigest() == row.images[0].sha256
    assert read_png_params(row.images[0].path)["seed"] == 7
    row2 = await jobs.get_job(store, two.job_id)
    assert [p.path.rsplit("/", 1)[1] for p in row2.images] == [f"{two.job_id}_0.png", f"{two.job_id}_1.png"]
    assert row2.seeds == (two.seed, two.seed + 1)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        [f"{one.job_id}.png", f"{two.job_id}_0.png", f"{two.job_id}_1.png"])
    # 2. what the bot heard: queued positions, started, steps, finished with the record
    assert [e.position for e in events.of(two.job_id, "queued")][:2] == [2, 1]
    assert [(e.step, e.total) for e in events.of(one.job_id, "progress")] == [(1, 2), (2, 2)]
    assert [said(e) for e in events.items if e.job_id == one.job_id][-3:] == ["progress", "progress", "done"]
    assert events.of(one.job_id, "done")[0].record.images == row.images


async def test_cancel_running_job_through_the_service(store, tmp_path, tiny_engine):
    service = running_service(store, tmp_path, tiny_engine)
    events = Events(service)
    long = await service.submit(request(1, "long", width=SIZE, height=SIZE, steps=40))
    after = await service.submit(request(2, "after", width=SIZE, height=SIZE))
    started = asyncio.Event()
    service.subscribe(lambda e: started.set() if e.progress and e.job_id == long.job_id else None)
    service.workers[0].start()
    await asyncio.wait_for(started.wait(), 30)
    assert await service.cancel(long.job_id) is CancelOutcome.STOPPING
    await events.wait_final(2)
    await stop(service)
    assert events.final() == {long.job_id: "cancelled", after.job_id: "done"}
    assert (await jobs.get_job(store, long.job_id)).status == "cancelled"
    assert len(events.of(long.job_id, "progress")) < 40
    assert not (tmp_path / "images" / f"{long.job_id}.png").exists()


async def test_engine_failure_fails_that_job_and_the_rest_go_on(store, tmp_path, tiny_engine):
    service = running_service(store, tmp_path, tiny_engine)
    events = Events(service)
    bad = await service.submit(request(1, "too small", width=64, height=64))  # the engine refuses 64x64
    good = await service.submit(request(2, "fine", width=SIZE, height=SIZE))
    service.workers[0].start()
    await events.wait_final(2)
    await stop(service)
    row = await jobs.get_job(store, bad.job_id)
    assert row.status == "failed" and "Width 64 is not allowed" in row.error
    assert events.of(bad.job_id, "failed")[0].message == row.error
    assert (await jobs.get_job(store, good.job_id)).status == "done"


async def test_restart_reruns_interrupted_jobs_in_order_with_the_same_pixels(db_url, tmp_path, tiny_engine):
    # 1. First life: a job is interrupted mid-run, two more wait behind it.
    store = await open_store(db_url)
    service = running_service(store, tmp_path, tiny_engine)
    progressed = asyncio.Event()
    service.subscribe(lambda e: progressed.set() if e.progress else None)
    ids = [(await service.submit(request(u, f"prompt {u}", width=SIZE, height=SIZE, steps=6, seed=100 + u))).job_id
           for u in (1, 2, 3)]
    service.workers[0].start()
    await asyncio.wait_for(progressed.wait(), 30)
    await stop(service)  # the bot stops: the running job keeps status running in the store
    assert [(await jobs.get_job(store, i)).status for i in ids] == ["running", "queued", "queued"]
    await store.close()
    # 2. Second life: recovery puts them back in order and they run to the end.
    store = await open_store(db_url)
    service = running_service(store, tmp_path, tiny_engine)
    events = Events(service)
    assert [j.id for j in await service.recover()] == ids
    service.workers[0].start()
    await events.wait_final(3)
    await stop(service)
    started = [e.job_id for e in events.items if said(e) == "running"]
    assert started == ids
    # 3. Same seed, same image: compare with a run of the same spec straight on the engine.
    first = await jobs.get_job(store, ids[0])
    reference = tiny_engine.generate(JobSpec("prompt 1", seed=101, steps=6, width=SIZE, height=SIZE))
    import numpy as np
    assert np.array_equal(pixels(first.images[0].path), np.asarray(reference.images[0].convert("RGB")))
    await store.close()


async def test_hundred_jobs_from_twenty_users_none_lost_and_the_loop_stays_responsive(store, tmp_path, tiny_engine):
    limits = replace(LIMITS, max_unfinished_per_user=5, queue_cap=100)
    service = running_service(store, tmp_path, tiny_engine)
    events = Events(service)
    lags: list[float] = []

    async def ticker():  # how late does a 10 ms sleep wake up?
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t0 - 0.01)

    tick = asyncio.create_task(ticker())
    service.limits = limits
    service.workers[0].start()
    ids = []
    for round_ in range(5):
        for user in range(20):
            sub = await service.submit(request(1000 + user, f"user {user} round {round_}", width=SIZE, height=SIZE,
                                               seed=user * 10 + round_))
            ids.append(sub.job_id)
    await events.wait_final(100, timeout=300)
    tick.cancel()
    await stop(service)
    assert sorted(events.final()) == sorted(ids) and set(events.final().values()) == {"done"}
    assert await jobs.count_unfinished(store) == 0
    assert len(list((tmp_path / "images").iterdir())) == 100
    worst, median = max(lags), sorted(lags)[len(lags) // 2]
    print(f"\n100 jobs: worst event-loop lag {worst * 1000:.1f} ms, median {median * 1000:.1f} ms, {len(lags)} ticks")
    assert worst < 0.25, f"the event loop was blocked {worst * 1000:.0f} ms"


# --- a result written while another program holds the database ---------------------------------------------

def _hold_write_lock(path, seconds: float, locked) -> None:
    import sqlite3
    import time

    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. a backup or a DB viewer writing: nobody else may write
    locked.set()
    time.sleep(seconds)
    other.execute("COMMIT")
    other.close()


@pytest.mark.parametrize("retries, expected", [((0.3,) * 8, "done"), ((), "running")])
async def test_a_result_outlasts_a_database_locked_past_its_busy_timeout(tmp_path, tiny_engine, retries, expected):
    import threading

    path = tmp_path / "busy.db"
    store = await open_store(f"sqlite+aiosqlite:///{path}", busy_timeout_s=0.2)
    try:
        service = make_service(store, tmp_path)
        service.busy_retry_delays_s = retries
        sub = await service.submit(request(1, width=256, height=256))
        assert await jobs.mark_running(store, sub.job_id)
        spec = JobSpec("a red fox in snow", seed=7, steps=1, width=256, height=256)
        result = await asyncio.to_thread(tiny_engine.generate, spec)
        # 1. another connection holds the write lock for 1 s: five busy timeouts
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 1.0, locked))
        holder.start()
        await asyncio.to_thread(locked.wait, 5)
        # 2. the worker reports the finished job meanwhile
        try:
            await service.on_finished(sub.job_id, result)
        except Exception as e:  # without retries the lock error reaches the worker, which logs it
            assert expected == "running" and "locked" in str(e)
        await asyncio.to_thread(holder.join)
        # 3. with retries the image is recorded; without, the job waits for a restart to rerun it
        job = await jobs.get_job(store, sub.job_id)
        assert job.status == expected
        assert len(job.images) == (1 if expected == "done" else 0)
    finally:
        await store.close()


async def test_show_names_what_any_worker_would_make_differently(store, tmp_path, tiny_engine, tiny_model_dir):
    """/show's "pixels may differ" note (bot/cogs/imagine.py) asks every worker: the job runs on whichever is free."""
    from engine.pipeline import Engine
    from engine.worker import Worker
    from tests.support.configs import tiny_engine_settings
    from tests.support.hooks import Recorder

    fp8 = Engine.load(tiny_engine_settings(tiny_model_dir.parent, compute="fp8"), "cpu")
    try:
        queue = JobQueue()
        workers = [Worker(f"cpu#{i}", e, queue, Recorder()) for i, e in enumerate((tiny_engine, fp8))]
        service = make_service(store, tmp_path, workers=workers, queue=queue)
        made_by_bf16 = tiny_engine.recipe.to_dict()
        assert service.recipe_differences(made_by_bf16) == []          # the fp8 engine switches to bf16 for it
        on_another_gpu = {**made_by_bf16, "device": "cuda sm_90"}
        assert service.recipe_differences(on_another_gpu) == [f"device: {tiny_engine.recipe.device} now, cuda sm_90 then"]
        made_by_fp8_tq = {**fp8.recipe.to_dict(), "compute": "fp8.row-fast-tq"}
        assert service.recipe_differences(made_by_fp8_tq) == ["matmul compute: bf16 now, fp8 (row-fast-tq) then",
                                                              "matmul compute: fp8 (row-fast) now, fp8 (row-fast-tq) then"]
        assert make_service(store, tmp_path).recipe_differences(made_by_bf16) is None   # no engine yet
    finally:
        fp8.close()
