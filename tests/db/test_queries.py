"""Reads the bot's commands rely on: /history pages, restart recovery order, per-user limits, cooldown."""
from __future__ import annotations

import asyncio

import pytest

from db import jobs
from db.records import JobOutput, NewJob

from tests.db.conftest import new_job

ALICE, BOB = 1001, 2002


async def test_history_pages_newest_first_and_only_the_users_own(store):
    alice_ids = []
    for i in range(23):
        alice_ids.append((await jobs.create_job(store, new_job(ALICE, prompt=f"alice {i}"))).id)
        if i % 8 == 0:
            await jobs.create_job(store, new_job(BOB, prompt=f"bob {i}"))

    first = await jobs.user_history(store, ALICE, page=1, per_page=10)
    assert first.total == 23 and first.pages == 3 and first.has_next and not first.has_prev
    assert [j.prompt for j in first.items] == [f"alice {i}" for i in range(22, 12, -1)]
    last = await jobs.user_history(store, ALICE, page=3, per_page=10)
    assert [j.id for j in last.items] == alice_ids[2::-1] and not last.has_next
    seen = [j.id for p in (1, 2, 3) for j in (await jobs.user_history(store, ALICE, p, 10)).items]
    assert seen == alice_ids[::-1], "pages cover every job once, newest first"
    assert (await jobs.user_history(store, ALICE, page=4, per_page=10)).items == []

    bob = await jobs.user_history(store, BOB, page=1, per_page=10)
    assert bob.total == 3 and all(j.user_id == BOB for j in bob.items)
    empty = await jobs.user_history(store, 3003)
    assert empty.total == 0 and empty.items == [] and empty.pages == 1


async def test_history_hides_deleted_jobs_unless_asked(store):
    kept = await jobs.create_job(store, new_job(ALICE, prompt="kept"))
    gone = await jobs.create_job(store, new_job(ALICE, prompt="deleted"))
    await jobs.mark_deleted(store, gone.id)
    page = await jobs.user_history(store, ALICE)
    assert [j.id for j in page.items] == [kept.id] and page.total == 1
    everything = await jobs.user_history(store, ALICE, include_deleted=True)
    assert [j.id for j in everything.items] == [gone.id, kept.id]


async def test_history_rejects_bad_pages(store):
    with pytest.raises(ValueError, match="counts from 1"):
        await jobs.user_history(store, ALICE, page=0)
    with pytest.raises(ValueError, match="per_page"):
        await jobs.user_history(store, ALICE, per_page=1000)


async def test_unfinished_jobs_oldest_first(store):
    a, b, c, d, e = [await jobs.create_job(store, new_job(ALICE if i % 2 else BOB)) for i in range(5)]
    await jobs.mark_running(store, b.id)
    await jobs.mark_running(store, c.id)
    await jobs.finish_job(store, c.id, JobOutput(seeds=[42], images=[]))
    await jobs.cancel_job(store, d.id)
    unfinished = await jobs.unfinished_jobs(store)
    assert [(j.id, j.status) for j in unfinished] == [(a.id, "queued"), (b.id, "running"), (e.id, "queued")]


async def test_counts_for_admission(store):
    assert await jobs.count_unfinished(store, ALICE) == 0
    a1 = await jobs.create_job(store, new_job(ALICE))
    a2 = await jobs.create_job(store, new_job(ALICE))
    await jobs.create_job(store, new_job(BOB))
    await jobs.mark_running(store, a2.id)
    assert await jobs.count_unfinished(store, ALICE) == 2
    assert await jobs.count_unfinished(store) == 3, "None counts everyone (the queue cap)"
    await jobs.fail_job(store, a1.id, "boom")
    assert await jobs.count_unfinished(store, ALICE) == 1


async def test_last_request_at_is_the_newest_job(store):
    assert await jobs.last_request_at(store, ALICE) is None
    await jobs.create_job(store, new_job(ALICE))
    newest = await jobs.create_job(store, new_job(ALICE))
    await jobs.create_job(store, new_job(BOB))
    assert await jobs.last_request_at(store, ALICE) == newest.created_at


async def test_many_concurrent_writers_all_land(store):
    created = await asyncio.gather(*(jobs.create_job(store, new_job(ALICE, prompt=f"p{i}")) for i in range(30)))
    assert len({j.id for j in created}) == 30
    assert (await jobs.user_history(store, ALICE, per_page=50)).total == 30


def test_new_job_refuses_an_unresolved_seed_or_bad_kind():
    with pytest.raises(ValueError, match="resolve"):
        NewJob(user_id=1, prompt="x", seed=-1, steps=20, width=64, height=64, guidance=3.5)
    with pytest.raises(ValueError, match="kind"):
        NewJob(user_id=1, prompt="x", seed=1, steps=20, width=64, height=64, guidance=3.5, kind="teleport")


async def test_interaction_tokens_are_cleared_on_delivery_and_after_fifteen_minutes(store):
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    fresh = await jobs.create_job(store, new_job(ALICE, interaction_id=1, interaction_token="tok-fresh-0123456789",
                                                 interaction_created_at=now - timedelta(minutes=2)))
    stale = await jobs.create_job(store, new_job(ALICE, interaction_id=2, interaction_token="tok-stale-0123456789",
                                                 interaction_created_at=now - timedelta(minutes=16)))
    sent = await jobs.create_job(store, new_job(ALICE, interaction_id=3, interaction_token="tok-sent-0123456789",
                                                interaction_created_at=now))
    # 1. Delivery clears the token at once; the 15-minute sweep clears the stale one and keeps the fresh one.
    assert await jobs.mark_delivered(store, sent.id)
    assert await jobs.forget_interaction_tokens(store, now - timedelta(minutes=15)) == 1
    tokens = {j.id: j.interaction_token for j in (await jobs.get_jobs(store, [fresh.id, stale.id, sent.id])).values()}
    assert tokens == {fresh.id: "tok-fresh-0123456789", stale.id: None, sent.id: None}
    # 2. The rest of the row stays (the interaction id and time are not secrets).
    row = await jobs.get_job(store, stale.id)
    assert row.interaction_id == 2 and row.interaction_created_at is not None
