"""The jobs service: admission, FIFO order, cancel, restart recovery, and (with the real tiny engine) the
whole path from submit to a saved PNG."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bot.config import LimitsSettings
from bot.service import (BannedWord, BannedWords, CancelOutcome, CoolingDown, EmptyPrompt, JobService,
                         NewRequest, PromptTooLong, QueueFull, TooManyImages, TooManyUnfinished, fold_words)
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
    return JobService(store, queue or JobQueue(), workers or [], limits, list(banned), tmp_path / "images")


# --- banned words ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", [
    "a NUDE figure", "a nüde figure", "a ｎｕｄｅ figure", "a nud\u0435 figure (cyrillic e)", "a n u d e figure",
    "a n.u.d.e figure", "a nu\u200bde figure", "a nvde figure".replace("v", "\u03c5"), "a NUD3 figure",
])
def test_banned_words_are_found_through_case_accents_lookalikes_and_spacing(prompt):
    assert BannedWords(["nude", "blood bath"]).find(prompt) == "nude"


@pytest.mark.parametrize("prompt", ["a nudibranch on a reef", "a classic car", "bloody mary", "a bath of blood"])
def test_banned_words_match_whole_words_only(prompt):
    assert BannedWords(["nude", "ass", "blood bath"]).find(prompt) is None


def test_banned_phrase_and_leetspeak():
    banned = BannedWords(["blood bath", "kill"])
    assert banned.find("a Blood  Bath at dawn") == "blood bath"
    assert banned.find("k1ll the lights") == "kill"
    assert fold_words("ＡＢＣ déjà") == ["abc", "deja"]


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

async def test_fifo_order_across_users_and_resolved_seed(store, tmp_path):
    service = make_service(store, tmp_path)
    subs = [await service.submit(request(user, seed=None)) for user in (10, 20, 10, 30)]
    assert [s.position for s in subs] == [1, 2, 3, 4]
    assert [j.job_id for j in service.queue.waiting()] == [s.job_id for s in subs]
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


# --- cancel and recovery without workers ----------------------------------------------------------------

async def test_cancel_queued_job_owner_admin_and_stranger(store, tmp_path):
    service = make_service(store, tmp_path)
    events = []
    service.subscribe(events.append)
    a, b, c = [await service.submit(request(u)) for u in (1, 2, 3)]
    assert await service.cancel(a.job_id, by_user_id=2) is CancelOutcome.NOT_YOURS
    assert await service.cancel(a.job_id, by_user_id=1) is CancelOutcome.CANCELLED
    assert await service.cancel(b.job_id, by_user_id=99, is_admin=True) is CancelOutcome.CANCELLED
    assert await service.cancel(a.job_id, by_user_id=1) is CancelOutcome.ALREADY_FINISHED
    assert await service.cancel(12345, by_user_id=1) is CancelOutcome.NOT_FOUND
    assert (await jobs.get_job(store, a.job_id)).status == "cancelled"
    assert service.queue.position(c.job_id) == 1
    assert [e.job_id for e in events if e.kind == "cancelled"] == [a.job_id, b.job_id]
    assert [e.position for e in events if e.kind == "queued" and e.job_id == c.job_id] == [3, 2, 1]


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
