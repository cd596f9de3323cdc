"""Per-job event sequence numbers, so a job's events can be delivered in order across processes.

A job's events are written by several processes (the API, the plan step, one inference step per
device). Each event's insert first bumps `jobs.event_seq`: that takes the job's row lock until the
writing transaction commits, so the job's events get consecutive `seq` (and increasing ids) in
commit order. They are published after commit by different processes and may reach NATS in another
order; the API's stream hub puts each job's events back in `seq` order (a short wait for a gap).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE jobs ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;
        ALTER TABLE events ADD COLUMN seq bigint;
        -- Existing jobs: number their events in id order.
        UPDATE jobs j SET event_seq = c.n FROM (SELECT job_id, count(*) AS n FROM events
                                                WHERE job_id IS NOT NULL GROUP BY job_id) c
        WHERE j.id = c.job_id;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE events DROP COLUMN seq; ALTER TABLE jobs DROP COLUMN event_seq;")
