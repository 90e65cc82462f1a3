"""The engine recipe each job was made with (`jobs.recipe`): fp8 storage, matmul compute, torch.compile, the torch
and diffusers versions and the device kind (engine/recipe.py), which decide pixels beside the job's parameters.

Revision ID: 0005_job_recipe
Revises: 0004_job_inputs
Create Date: 2026-11-30

Jobs made before have no recipe (NULL): `/show` then says it cannot tell whether the pixels will match. Only a
column is added (no table rebuild on SQLite). Keep db/models.py and this script in step.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_recipe"
down_revision = "0004_job_inputs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("recipe", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("recipe")
