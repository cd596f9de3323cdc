"""Event ids that say when every earlier one has settled. Ids are handed out in one order and
committed in another (two transactions: the later id may commit first), so a reader that has seen id
N cannot tell whether a smaller id is still on its way, and a client resuming from N would never get
it (the chaos test lost a job state so). Now an event's id comes from `next_event_id()`, which takes
shared advisory locks its transaction holds until it ends: one on (K, 0) before the id is handed out,
and one whose keys encode the transaction's first event id once it has one. A reader sees in
`pg_locks` the smallest event id of every open transaction, and so the id below which all have settled
(`constellation_core.events.settled_event_id`), without waiting for anyone. Shared locks do not
conflict: writers never wait on each other.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# The advisory locks' first key: constellation_core.events.EVENT_ID_LOCK.
K = 1129270867


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE events ALTER COLUMN id DROP IDENTITY;
        CREATE SEQUENCE events_id_seq OWNED BY events.id;
        SELECT setval('events_id_seq', coalesce(max(id), 0) + 1, false) FROM events;
        CREATE FUNCTION next_event_id() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            id bigint;
        BEGIN
            -- This transaction is taking an event id (a reader waits the moment until it has one).
            PERFORM pg_advisory_xact_lock_shared({K}, 0);
            id := nextval('events_id_seq');
            IF coalesce(current_setting('constellation.first_event_id', true), '') = '' THEN
                -- Its first id, the smallest it will ever hold, in the keys of a lock of its own.
                PERFORM pg_advisory_xact_lock_shared({K} + 1 + (id >> 31)::integer, (id & 2147483647)::integer);
                PERFORM set_config('constellation.first_event_id', id::text, true);
            END IF;
            RETURN id;
        END $$;
        ALTER TABLE events ALTER COLUMN id SET DEFAULT next_event_id();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE events ALTER COLUMN id DROP DEFAULT;
        DROP FUNCTION next_event_id();
        DROP SEQUENCE events_id_seq;
        ALTER TABLE events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
        SELECT setval(pg_get_serial_sequence('events', 'id'), coalesce(max(id), 0) + 1, false) FROM events;
        """
    )
