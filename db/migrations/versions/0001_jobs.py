"""The jobs table.

Revision ID: 0001_jobs
Revises:
Create Date: 2026-11-24

Keep db/models.py and this script in step: tests/db checks that head matches the models.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_jobs"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        # identity and lineage
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        # who asked, and where
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("interaction_id", sa.BigInteger(), nullable=True),
        sa.Column("interaction_token", sa.String(512), nullable=True),
        sa.Column("interaction_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_message_id", sa.BigInteger(), nullable=True),
        sa.Column("result_channel_id", sa.BigInteger(), nullable=True),
        sa.Column("result_message_id", sa.BigInteger(), nullable=True),
        # what was asked
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("guidance", sa.Float(), nullable=False),
        sa.Column("variation_seed", sa.BigInteger(), nullable=True),
        sa.Column("variation_strength", sa.Float(), nullable=False),
        sa.Column("model_id", sa.String(200), nullable=True),
        # what happened
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("precision", sa.String(200), nullable=True),
        sa.Column("profile", sa.String(32), nullable=True),
        sa.Column("seeds", sa.JSON(), nullable=True),
        sa.Column("images", sa.JSON(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.ForeignKeyConstraint(["parent_id"], ["jobs.id"], name=op.f("fk_jobs_parent_id_jobs"), ondelete="SET NULL"),
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed', 'cancelled')",
                           name=op.f("ck_jobs_status")),
        sa.CheckConstraint("kind IN ('imagine', 'reroll', 'vary', 'edit', 'show')", name=op.f("ck_jobs_kind")),
        sqlite_autoincrement=True,  # ids go in button custom_ids: never reuse one
    )
    op.create_index(op.f("ix_jobs_parent_id"), "jobs", ["parent_id"])
    op.create_index(op.f("ix_jobs_user_history"), "jobs", ["user_id", "id"])
    op.create_index(op.f("ix_jobs_status_order"), "jobs", ["status", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_status_order"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_user_history"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_parent_id"), table_name="jobs")
    op.drop_table("jobs")
