"""WebJobs against the real jobs service and SQLite (no server): a login's identity, and the console counted as one
place for `[limits] max_unfinished_per_guild`."""
from __future__ import annotations

import pytest

from bot.admission_errors import GuildQueueFull
from bot.config import LimitsSettings
from bot.job_types import NewRequest
from bot.service import JobService
from bot.web.jobs import LOCAL_USER, NotThisConsoles, WebJobs, WebUser, web_user_id
from db.session import open_store
from engine.queue import JobQueue
from engine.spec import JobSpec


@pytest.fixture
async def store(tmp_path):
    s = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'fluxbot.db'}")
    yield s
    await s.close()


def spec(prompt: str = "a red fox") -> JobSpec:
    return JobSpec(prompt, seed=1, steps=1, width=256, height=256)


def test_a_login_has_its_own_stable_negative_id():
    assert web_user_id("alice") == web_user_id("alice") < 0
    assert len({web_user_id(name) for name in ("alice", "bob", LOCAL_USER, "Alice")}) == 4
    assert WebUser.of(None).login == LOCAL_USER and WebUser.of("bob").user_id == web_user_id("bob")


async def test_the_console_is_one_place_for_the_per_server_cap(store, tmp_path):
    service = JobService(store, JobQueue(), [], LimitsSettings(max_unfinished_per_guild=1), [], tmp_path / "images")
    web = WebJobs(service)
    # 1. alice's web job fills the console's share; bob's waits for it, with the console named
    first = await anext(web.run(WebUser("alice"), spec()))
    assert first.state == "queued" and first.record.user_name == "alice" and first.record.source == "web"
    with pytest.raises(GuildQueueFull, match=r"^The web console has 1 unfinished job\(s\) already \(the limit is 1\)"):
        await anext(web.run(WebUser("bob"), spec()))
    # 2. Discord's direct messages and servers are other places
    await service.submit(NewRequest(user_id=5, spec=spec(), guild_id=None, channel_id=9))
    await service.submit(NewRequest(user_id=6, spec=spec(), guild_id=42, channel_id=9))
    # 3. a login reaches only its own jobs
    with pytest.raises(NotThisConsoles, match=f"Job #{first.job_id} is not one of this console's jobs"):
        await web.own_job(WebUser("bob"), first.job_id)
    assert (await web.own_job(WebUser("alice"), first.job_id)).id == first.job_id
