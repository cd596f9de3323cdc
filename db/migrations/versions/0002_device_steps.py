"""Per-job chunk queue and per-device inference steps.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE tiles ADD COLUMN chunk_no integer NOT NULL DEFAULT 0;

        -- A job's tiles in batches. Devices claim a pending chunk with FOR UPDATE SKIP LOCKED and
        -- hold the row lock while they infer it; a crash releases the lock, so the chunk is simply
        -- pending again. Results and the chunk's `done` commit together.
        CREATE TABLE tile_chunks (
            job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            chunk_no integer NOT NULL,
            tiles integer NOT NULL,
            state text NOT NULL DEFAULT 'pending',
            device_uuid text,
            finished_at timestamptz,
            CONSTRAINT tile_chunks_pkey PRIMARY KEY (job_id, chunk_no),
            CONSTRAINT tile_chunks_state_check CHECK (state IN ('pending', 'done'))
        );
        CREATE INDEX tile_chunks_pending_idx ON tile_chunks (job_id, chunk_no) WHERE state = 'pending';

        -- One row per inference step on a device: when it held the device, and what it did.
        CREATE TABLE steps (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            run_id uuid REFERENCES runs (id) ON DELETE SET NULL,
            gpu_id uuid NOT NULL REFERENCES gpus (id),
            step_key text NOT NULL,
            pid integer NOT NULL,
            cuda_visible_devices text,
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at timestamptz,
            tiles integer NOT NULL DEFAULT 0,
            metrics jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX steps_gpu_started_idx ON steps (gpu_id, started_at);
        CREATE INDEX steps_job_id_idx ON steps (job_id);

        ALTER TABLE tile_results ADD COLUMN gpu_id uuid REFERENCES gpus (id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE tile_results DROP COLUMN gpu_id;
        DROP TABLE steps;
        DROP TABLE tile_chunks;
        ALTER TABLE tiles DROP COLUMN chunk_no;
        """
    )
