"""Web and Discord users on one queue: the fair order, the same per-user limit, live position and step progress, and
Cancel — through the console's API while the engine's worker is held back, then running."""
from __future__ import annotations

import time

import pytest

from bot.config import LimitsSettings
from bot.job_types import NewRequest
from db import jobs as store_jobs
from engine.spec import JobSpec
from tests.support.web_console import RunningConsole, first_output, form

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def console(tmp_path_factory, tiny_model_dir):
    running = RunningConsole(tmp_path_factory.mktemp("web"), tiny_model_dir.parent, start_workers=False,
                             limits=LimitsSettings(max_unfinished_per_user=1)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(console, tmp_path_factory):
    return gradio_client.Client(console.url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def discord_job(console, prompt: str) -> int:
    """A Discord admin's job (admins skip the per-user limit), through the same jobs service."""
    spec = JobSpec(prompt, seed=3, steps=1, width=256, height=256)
    return console.call(console.service.submit(NewRequest(user_id=1, spec=spec, guild_id=1, channel_id=2,
                                                          exempt=True))).job_id


def test_web_and_discord_share_one_fair_queue_under_the_same_limits(console, client):
    # 1. a Discord user has two jobs waiting
    first, second = discord_job(console, "discord one"), discord_job(console, "discord two")
    # 2. a web request waits too, and the page says where: second, ahead of the Discord user's second job
    web = client.submit(*form("a web fox", steps=1), api_name="/generate")
    status, _, web_id, seed, *_ = first_output(web)
    assert status == f"Job #{int(web_id)} queued: #2 in line, about {status.split('about ')[1]}"
    assert [j.job_id for j in console.service.queue.waiting()] == [first, int(web_id), second]
    # 3. the same per-user limit as on Discord: a second web request is refused while the first waits
    with pytest.raises(gradio_client.exceptions.AppError, match="You already have 1 unfinished job"):
        client.predict(*form("another", steps=1), api_name="/generate")
    # 4. the worker starts: the jobs run in that order, the web one is shown done
    console.start_workers()
    assert web.result(timeout=120)[0].startswith(f"Job #{int(web_id)} done")
    started = {}
    deadline = time.monotonic() + 60
    while len(started) < 3:
        assert time.monotonic() < deadline
        rows = console.call(store_jobs.get_jobs(console.store, [first, int(web_id), second]))
        started = {i: r.started_at for i, r in rows.items() if r.status == "done"}
        time.sleep(0.1)
    assert sorted(started, key=started.get) == [first, int(web_id), second]


def test_step_progress_is_live_and_cancel_stops_the_job(console, client):
    # "slow" sleeps 0.3 s after each step (tests/support/engines.py): time to see the steps and press Cancel
    job = client.submit(*form("slow", steps=20), api_name="/generate")
    job_id = int(first_output(job)[2])
    deadline = time.monotonic() + 60
    progress = None
    while progress is None:
        assert time.monotonic() < deadline, "no step progress shown"
        units = job.status().progress_data or []
        progress = next((u for u in units if u.index), None)
        time.sleep(0.05)
    assert progress.length == 20 and progress.desc == f"step {progress.index}/20"
    assert client.predict(job_id, api_name="/cancel") == f"Job #{job_id}: stopping."
    assert job.result(timeout=60)[0] == f"Job #{job_id} was cancelled."
    assert console.call(store_jobs.get_job(console.store, job_id)).status == "cancelled"
