"""Least-privilege roles for the services: `constellation_api` and `constellation_dagster` (Dagster's
processes, the dispatcher, device workers and GPU agent) read and write rows but change no schema;
`constellation_usage` only reads accounts, keys and daily usage. Tables made by later migrations get
the same rights (default privileges of the migrating role). The roles are created without a login
here: an operator makes them log in (`ALTER ROLE … LOGIN PASSWORD …`) or grants them to the service
users; the local stack does it for itself (constellation_devstack/postgres.py).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

WRITERS = "constellation_api, constellation_dagster"
USAGE_READS = "accounts, api_keys, usage_daily, alembic_version"


def upgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE role text;
        BEGIN
            FOREACH role IN ARRAY ARRAY['constellation_api', 'constellation_dagster', 'constellation_usage'] LOOP
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role) THEN
                    EXECUTE format('CREATE ROLE %I NOLOGIN', role);
                END IF;
            END LOOP;
        END $$;
        """
    )
    op.execute(
        f"""
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {WRITERS};
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {WRITERS};
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {WRITERS};
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {WRITERS};
        GRANT SELECT ON {USAGE_READS} TO constellation_usage;
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {WRITERS};
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {WRITERS};
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {WRITERS};
        REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {WRITERS}, constellation_usage;
        """
    )
