"""The database's identity (`instance`), and bounded delivery retries (`jobs.delivery_refusals`,
`jobs.undeliverable_reason`).

Revision ID: 0002_identity_delivery
Revises: 0001_jobs
Create Date: 2026-11-30

A database upgraded from 0001 gets its identity here, as a new one gets it at creation. Buttons posted before
carry no identity and keep working (bot/views.py). Keep db/models.py and this script in step.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0002_identity_delivery"
down_revision = "0001_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 1. the identity: one row, made now
    instance = op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identity", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance")),
        sa.CheckConstraint("id = 1", name=op.f("ck_instance_one_row")),
    )
    now = datetime.now(timezone.utc)
    if op.get_context().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # SQLite keeps the UTC wall time (db.models.UTCDateTime)
    op.bulk_insert(instance, [{"id": 1, "identity": secrets.token_hex(4), "created_at": now}])
    # 2. delivery bookkeeping of the jobs
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("delivery_refusals", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("undeliverable_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("undeliverable_reason")
        batch.drop_column("delivery_refusals")
    op.drop_table("instance")
