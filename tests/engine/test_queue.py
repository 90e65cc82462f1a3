"""The FIFO: order, positions, ETAs and the events a waiting user sees."""
from __future__ import annotations

import asyncio

import pytest

from engine.job_status import JobStatus
from engine.queue import EtaModel, JobQueue, QueueClosed
from engine.spec import JobSpec

QUEUED, RUNNING = JobStatus.QUEUED, JobStatus.RUNNING


def spec(prompt="a cat", **kw) -> JobSpec:
    kw.setdefault("seed", 1)
    kw.setdefault("steps", 2)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    return JobSpec(prompt, **kw)


async def test_jobs_come_out_in_submission_order_and_positions_shift():
    q = JobQueue()
    assert [q.submit(i, spec(f"p{i}")) for i in (10, 11, 12)] == [1, 2, 3]
    assert (q.position(10), q.position(12), len(q)) == (1, 3, 3)
    first = await q.take()
    assert [j.job_id for j in first] == [10]
    assert q.position(10) is None and q.is_running(10)
    assert (q.position(11), q.position(12)) == (1, 2)
    assert q.remove(11) is True
    assert q.position(12) == 1
    assert q.remove(11) is False and q.remove(10) is False  # gone / running: not removable from the FIFO
    assert [j.job_id for j in await q.take()] == [12]


async def test_duplicate_job_id_is_refused():
    q = JobQueue()
    q.submit(1, spec())
    with pytest.raises(ValueError, match="already in the queue"):
        q.submit(1, spec())


async def test_listeners_hear_positions_and_etas_change():
    q = JobQueue(eta=EtaModel(default_s_per_unit=10.0))
    events = []
    q.subscribe(events.append)
    for i in (1, 2, 3):
        q.submit(i, spec(steps=4, width=1024, height=1024))  # 4 units = 40 s each before anything ran
    latest = {e.job_id: e for e in events if e.status == QUEUED}
    assert (latest[3].position, round(latest[3].eta_s)) == (3, 120)
    events.clear()
    (job,) = await q.take(worker="w0")
    assert [e.status for e in events if e.job_id == 1] == [RUNNING]
    latest = {e.job_id: e for e in events if e.status == QUEUED}
    assert (latest[2].position, latest[3].position) == (1, 2)
    events.clear()
    q.progress(1, 2, 4)  # half done: 20 s less for everyone behind
    latest = {e.job_id: e for e in events if e.status == QUEUED}
    assert round(latest[3].eta_s) == 100
    events.clear()
    q.finish([1], 4.0)  # it took 4 s: the same kind of job is now expected to take 4 s
    latest = {e.job_id: e for e in events if e.status == QUEUED}
    assert round(latest[2].eta_s) == 4 and round(latest[3].eta_s) == 8
    assert q.eta_s(3) == pytest.approx(8.0)


async def test_coroutine_listener_and_failing_listener_do_not_break_the_queue():
    q = JobQueue()
    seen = []

    async def slow(event):
        await asyncio.sleep(0)
        seen.append(event.job_id)

    def broken(event):
        raise RuntimeError("listener bug")

    q.subscribe(broken)
    unsubscribe = q.subscribe(slow)
    q.submit(5, spec())
    await asyncio.sleep(0.01)
    assert seen == [5]
    unsubscribe()
    q.submit(6, spec())
    await asyncio.sleep(0.01)
    assert seen == [5]


async def test_eta_is_shared_among_workers():
    q = JobQueue(eta=EtaModel(default_s_per_unit=10.0), workers=2)
    for i in range(4):
        q.submit(i, spec(steps=1, width=1024, height=1024))  # 10 s each
    # job 3 waits for 3 jobs (30 s) split over 2 workers, then runs 10 s
    assert q.eta_s(3) == pytest.approx(25.0)


async def test_eta_model_falls_back_from_same_size_to_per_unit_to_default():
    m = EtaModel(default_s_per_unit=2.0)
    big = spec(steps=10, width=1024, height=1024)
    assert m.estimate(big) == pytest.approx(20.0)
    m.record(spec(steps=2, width=512, height=512), 1.0)  # 0.5 units -> 2 s/unit
    m.record(spec(steps=2, width=512, height=512), 3.0)  # 6 s/unit
    assert m.estimate(spec(steps=2, width=512, height=512)) == pytest.approx(2.0)
    assert m.estimate(big) == pytest.approx(40.0)  # 10 units x 4 s/unit


async def test_take_waits_for_a_job_and_close_wakes_workers():
    q = JobQueue()
    taker = asyncio.create_task(q.take())
    await asyncio.sleep(0.01)
    assert not taker.done()
    q.submit(7, spec())
    assert [j.job_id for j in await asyncio.wait_for(taker, 1)] == [7]
    idle = asyncio.create_task(q.take())
    await asyncio.sleep(0.01)
    q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(idle, 1)
    with pytest.raises(QueueClosed):
        q.submit(8, spec())


async def test_batching_takes_later_jobs_of_the_same_kind_up_to_the_image_limit():
    q = JobQueue()
    q.submit(1, spec(width=64))
    q.submit(2, spec(width=128))          # different size: stays
    q.submit(3, spec(width=64, count=2))
    q.submit(4, spec(width=64))
    q.submit(5, spec(width=64))
    batch = await q.take(max_images=4)
    assert [j.job_id for j in batch] == [1, 3, 4]  # 1 + 2 + 1 images
    assert [j.job_id for j in q.waiting()] == [2, 5]
    assert [j.job_id for j in await q.take(max_images=4)] == [2]  # the overtaken job is next
    assert q.running().keys() == {1, 3, 4, 2}


async def test_jobs_with_other_loras_or_image_strengths_never_share_a_batch():
    from engine.spec import LoraUse

    style, detail = (LoraUse("style", 0.8, "a" * 64),), (LoraUse("detail", 0.8, "b" * 64),)
    q = JobQueue()
    q.submit(1, spec(loras=style))
    q.submit(2, spec(loras=detail))                                   # other LoRA set: stays
    q.submit(3, spec(loras=(LoraUse("style", 0.5, "a" * 64),)))       # same LoRA, other strength: stays
    q.submit(4, spec(loras=style))
    q.submit(5, spec(loras=style, image="/in/1.png", denoise=0.6))    # an image input: its own batches
    q.submit(6, spec(loras=style, image="/in/2.png", denoise=0.6))    # another image, same strength: with 5
    q.submit(7, spec(loras=style, image="/in/3.png", denoise=0.3))
    assert [j.job_id for j in await q.take(max_images=8)] == [1, 4]
    assert [j.job_id for j in await q.take(max_images=8)] == [2]
    assert [j.job_id for j in await q.take(max_images=8)] == [3]
    assert [j.job_id for j in await q.take(max_images=8)] == [5, 6]
    assert [j.job_id for j in await q.take(max_images=8)] == [7]


async def test_two_takers_never_get_the_same_job():
    q = JobQueue()
    got: list[int] = []

    async def worker():
        while True:
            try:
                batch = await q.take()
            except QueueClosed:
                return
            got.extend(j.job_id for j in batch)
            await asyncio.sleep(0)
            q.finish([j.job_id for j in batch], 0.0)

    tasks = [asyncio.create_task(worker()) for _ in range(2)]
    for i in range(50):
        q.submit(i, spec())
        if i % 7 == 0:
            await asyncio.sleep(0)
    while len(got) < 50:
        await asyncio.sleep(0.001)
    q.close()
    await asyncio.gather(*tasks)
    assert sorted(got) == list(range(50))


async def test_progress_reestimates_at_most_once_a_second_and_at_the_last_step():
    q = JobQueue(eta=EtaModel(default_s_per_unit=100.0))
    q.submit(1, spec(steps=10, width=1024, height=1024))
    q.submit(2, spec(steps=10, width=1024, height=1024))
    await q.take()
    events = []
    q.subscribe(events.append)
    q.progress(1, 5, 10)   # 500 s less: announced
    q.progress(1, 6, 10)   # 100 s less, but within the second: not yet
    assert [round(e.eta_s) for e in events] == [1500]
    q.progress(1, 10, 10)  # the last step always re-estimates
    assert [round(e.eta_s) for e in events] == [1500, 1000]


# --- fair order: round-robin across owners, FIFO within one ---------------------------------------------------

async def take_all(q: JobQueue, max_images: int = 1) -> list[int]:
    out = []
    while len(q):
        out += [j.job_id for j in await q.take(max_images)]
    return out


async def test_one_owners_backlog_does_not_hold_up_the_others():
    q = JobQueue()
    # alice (1) sends three jobs, then bob (2) one, then carol (3) two.
    positions = [q.submit(jid, spec(), owner=owner) for jid, owner in
                 [(11, 1), (12, 1), (13, 1), (21, 2), (31, 3), (32, 3)]]
    # bob waits for one job of alice, not three; carol's second comes after everyone's first.
    assert positions == [1, 2, 3, 2, 3, 5]
    assert [j.job_id for j in q.waiting()] == [11, 21, 31, 12, 32, 13]
    told = {j.job_id: q.position(j.job_id) for j in q.waiting()}
    # What each was told is the order the workers follow.
    taken = await take_all(q)
    assert taken == [11, 21, 31, 12, 32, 13]
    assert [told[jid] for jid in taken] == [1, 2, 3, 4, 5, 6]


async def test_a_newcomer_goes_into_the_round_being_served():
    q = JobQueue()
    for jid in (11, 12, 13):
        q.submit(jid, spec(), owner=1)
    assert [j.job_id for j in await q.take()] == [11]  # alice's first runs
    # bob arrives while alice's first runs: he is next, ahead of alice's second.
    assert q.submit(21, spec(), owner=2) == 1
    # alice's fourth goes after her third; dave, later still, goes ahead of alice's second (her round 1).
    assert q.submit(14, spec(), owner=1) == 4
    assert q.submit(41, spec(), owner=4) == 2
    assert await take_all(q) == [21, 41, 12, 13, 14]


async def test_etas_follow_the_fair_order():
    q = JobQueue(eta=EtaModel(default_s_per_unit=10.0))  # 4 steps at 1024² = 40 s a job
    events = []
    q.subscribe(events.append)
    for jid, owner in [(11, 1), (12, 1), (13, 1), (21, 2)]:
        q.submit(jid, spec(steps=4, width=1024, height=1024), owner=owner)
    latest = {e.job_id: e for e in events if e.status == QUEUED}
    assert {jid: (e.position, round(e.eta_s)) for jid, e in latest.items()} == \
        {11: (1, 40), 21: (2, 80), 12: (3, 120), 13: (4, 160)}
    assert round(q.eta_s(21)) == 80 and round(q.eta_s(13)) == 160
    # Two workers share what is ahead: bob's job starts when alice's first is half done.
    q.set_workers(2)
    assert round(q.eta_s(21)) == 60


async def test_batching_keeps_each_owners_order_and_the_fair_order():
    q = JobQueue()
    q.submit(11, spec(width=64), owner=1)
    q.submit(12, spec(width=128), owner=1)  # another size: not in the 64² batch
    q.submit(13, spec(width=64), owner=1)   # same size, but alice's 12 waits before it
    q.submit(21, spec(width=64), owner=2)
    q.submit(22, spec(width=64), owner=2)
    assert [j.job_id for j in q.waiting()] == [11, 21, 12, 22, 13]
    batch = await q.take(max_images=4)
    assert [j.job_id for j in batch] == [11, 21, 22]  # never 13 ahead of 12
    assert await take_all(q, 4) == [12, 13]


async def test_a_cancelled_job_leaves_the_order_and_later_positions_move_up():
    q = JobQueue()
    for jid, owner in [(11, 1), (12, 1), (21, 2), (22, 2)]:
        q.submit(jid, spec(), owner=owner)
    assert [j.job_id for j in q.waiting()] == [11, 21, 12, 22]
    assert q.remove(21) is True
    assert (q.position(12), q.position(22)) == (2, 3)
    assert await take_all(q) == [11, 12, 22]


async def test_a_requeued_job_waits_at_the_head_of_its_owners_turn_and_is_announced_again():
    q = JobQueue()
    events = []
    q.subscribe(events.append)
    q.submit(1, spec("a"), owner=10)
    q.submit(2, spec("b"), owner=10)
    q.submit(3, spec("c"), owner=20)
    (taken,) = await q.take()
    assert taken.job_id == 1 and [j.job_id for j in q.waiting()] == [3, 2]
    events.clear()
    q.requeue([1])  # its engine went away mid-job (a Ray node died)
    # Ahead of user 20's job of the same round and of its owner's later job; its user sees "queued, 1st" again.
    assert [j.job_id for j in q.waiting()] == [1, 3, 2] and not q.is_running(1) and q.position(1) == 1
    assert (1, QUEUED, 1) in [(e.job_id, e.status, e.position) for e in events]
    assert q.waiting()[0].losses == 1
    (again,) = await q.take()
    assert again.job_id == 1 and again.losses == 1
    q.requeue([99, 3])  # not running: nothing happens
    assert [j.job_id for j in q.waiting()] == [3, 2]
