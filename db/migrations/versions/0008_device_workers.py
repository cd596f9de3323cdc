"""Device workers on Ray: where each device lives, when it went away, and what a job was admitted with.

- `gpus.host` / `gpus.ray_node_id`: the machine (Ray node) a device belongs to; `gpus.gone_at`: when its
  worker or node died (NULL while it serves). A device that comes back clears it. `gpus.spec`: the
  device as its worker described it (on a cluster the code location builds its pools from these).
- `steps.model_version` / `steps.model_uri`: the model a job's batches run with on that device; the
  device worker loads each version once and keeps it.
- The device workers pick the next batch among the jobs admitted to their device (open `steps`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE gpus ADD COLUMN host text, ADD COLUMN ray_node_id text, ADD COLUMN gone_at timestamptz,
            ADD COLUMN spec jsonb;
        ALTER TABLE steps ADD COLUMN model_version text, ADD COLUMN model_uri text;
        CREATE INDEX steps_open_idx ON steps (gpu_id, started_at) WHERE finished_at IS NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX steps_open_idx;
        ALTER TABLE steps DROP COLUMN model_version, DROP COLUMN model_uri;
        ALTER TABLE gpus DROP COLUMN host, DROP COLUMN ray_node_id, DROP COLUMN gone_at, DROP COLUMN spec;
        """
    )
