"""An upgrade of fluxbot that changes the schema keeps every user's history."""
from __future__ import annotations

import shutil

from sqlalchemy import text

from db import jobs
from db.records import JobOutput
from db.migrate import MIGRATIONS_DIR, current_revision, head_revision, schema_sql, upgrade_to_head
from db.session import open_store

from tests.db.conftest import new_job

# A future revision, written the way a real one would be (batch mode: SQLite rebuilds the table).
FUTURE = '''
import sqlalchemy as sa
from alembic import op

revision = "0099_test_note"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch.alter_column("prompt", existing_type=sa.Text(), type_=sa.Text(), nullable=False)


def downgrade():
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("note")
'''


async def test_a_schema_change_keeps_every_row(db_url, tmp_path):
    # 1. a database at today's head, with history
    async with await open_store(db_url) as store:
        made = [await jobs.create_job(store, new_job(user_id=7, prompt=f"old {i}")) for i in range(2)]
        made.append(await jobs.create_job(store, new_job(user_id=7, prompt="old 2", kind="reroll",
                                                         parent_id=made[0].id)))
        await jobs.mark_running(store, made[0].id)
        await jobs.finish_job(store, made[0].id, JobOutput(seeds=[42], images=[]))
    # 2. tomorrow's fluxbot: the same scripts plus one more revision
    future_dir = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, future_dir, ignore=shutil.ignore_patterns("__pycache__"))
    (future_dir / "versions" / "0099_test_note.py").write_text(FUTURE.format(head=head_revision()))
    async with await open_store(db_url, migrate=False) as store:
        before, after = await upgrade_to_head(store.engine, future_dir)
        assert (before, after) == (head_revision(), "0099_test_note")
        assert await current_revision(store.engine) == "0099_test_note"
        # 3. every row survived the table rebuild, and the new column is there
        async with store.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, prompt, status, note FROM jobs ORDER BY id"))).all()
        assert [(r.prompt, r.status, r.note) for r in rows] == [("old 0", "done", None), ("old 1", "queued", None),
                                                                ("old 2", "queued", None)]
        assert (await jobs.get_job(store, made[2].id)).parent_id == made[0].id, "lineage survives the rebuild"
        page = await jobs.user_history(store, 7)
        assert page.total == 3 and page.items[-1].seeds == (42,)
        # 4. still WAL + foreign keys after the rebuild
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1


def test_postgres_ddl_renders_without_a_server():
    sql = schema_sql("postgresql+asyncpg://fluxbot:secret@db.example/fluxbot")
    assert "CREATE TABLE jobs" in sql and "secret" not in sql
    assert "created_at TIMESTAMP WITH TIME ZONE NOT NULL" in sql
    assert "user_id BIGINT NOT NULL" in sql and "seed BIGINT NOT NULL" in sql, "snowflakes and 2**32-1 seeds fit"
    assert "CREATE INDEX ix_jobs_user_history ON jobs (user_id, id)" in sql
