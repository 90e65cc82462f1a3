"""What else a job was made from: its LoRAs (`jobs.loras`), an input image (`jobs.input_image`, `jobs.input_sha256`)
with its strength (`jobs.denoise`), and the `upscale` kind (🔍 Upscale ×2).

Revision ID: 0004_job_inputs
Revises: 0003_job_source
Create Date: 2026-11-30

The kind CHECK gains 'upscale'. On SQLite a changed CHECK rebuilds the table (batch mode), and a rebuilt table
forgets AUTOINCREMENT's high-water mark (`sqlite_sequence`): it is read before and put back after, so an id is
never reused (ids go in button custom_ids). Keep db/models.py and this script in step.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_job_inputs"
down_revision = "0003_job_source"
branch_labels = None
depends_on = None

OLD_KINDS = "kind IN ('imagine', 'reroll', 'vary', 'edit', 'show')"
NEW_KINDS = "kind IN ('imagine', 'reroll', 'vary', 'edit', 'show', 'upscale')"


def upgrade() -> None:
    high_water = _sequence()
    with op.batch_alter_table("jobs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("loras", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("input_image", sa.Text(), nullable=True))
        batch.add_column(sa.Column("input_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("denoise", sa.Float(), nullable=True))
        batch.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch.create_check_constraint("kind", NEW_KINDS)
    _restore_sequence(high_water)


def downgrade() -> None:
    high_water = _sequence()
    op.execute("UPDATE jobs SET kind = 'imagine' WHERE kind = 'upscale'")
    with op.batch_alter_table("jobs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch.create_check_constraint("kind", OLD_KINDS)
        batch.drop_column("denoise")
        batch.drop_column("input_sha256")
        batch.drop_column("input_image")
        batch.drop_column("loras")
    _restore_sequence(high_water)


def _sequence() -> int | None:
    """SQLite: the jobs table's AUTOINCREMENT high-water mark (None elsewhere)."""
    if op.get_context().dialect.name != "sqlite":
        return None
    row = op.get_bind().execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'")).first()
    return int(row[0]) if row else None


def _restore_sequence(high_water: int | None) -> None:
    if high_water is None:
        return
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT 1 FROM sqlite_sequence WHERE name = 'jobs'")).first():
        bind.execute(sa.text("UPDATE sqlite_sequence SET seq = MAX(seq, :hw) WHERE name = 'jobs'"), {"hw": high_water})
    else:
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', :hw)"), {"hw": high_water})
