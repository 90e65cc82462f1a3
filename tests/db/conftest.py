from __future__ import annotations

import pytest

from db.records import NewJob
from db.session import open_store


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'fluxbot.db'}"


@pytest.fixture
async def store(db_url):
    s = await open_store(db_url)
    yield s
    await s.close()


def new_job(user_id: int = 111, prompt: str = "a red fox in snow", **kw) -> NewJob:
    values = dict(user_id=user_id, prompt=prompt, seed=42, steps=20, width=1024, height=1024, guidance=3.5,
                  guild_id=9001, channel_id=5005)
    values.update(kw)
    return NewJob(**values)
