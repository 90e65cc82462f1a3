"""Where a job was asked for (`jobs.source`: discord or web) and the web console's login (`jobs.user_name`).

Revision ID: 0003_job_source
Revises: 0002_identity_delivery
Create Date: 2026-11-30

Every job before this one came from Discord. A web job's `user_id` is its login's own negative id
(bot/web/jobs.py `web_user_id`), so per-user limits, the fair order and a login's history work as for a Discord
user. Only columns are added (no CHECK on `source`: on SQLite that would rebuild the table, and a rebuilt table
forgets AUTOINCREMENT's high-water mark; `db.records.NewJob` checks the value). Keep db/models.py and this script in
step.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_job_source"
down_revision = "0002_identity_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="discord"))
        batch.add_column(sa.Column("user_name", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("user_name")
        batch.drop_column("source")
