"""Initial schema: accounts, API keys, areas, GPUs, jobs, runs, events, tiles and tile results.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.execute(
        """
        CREATE TABLE accounts (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text NOT NULL UNIQUE,
            role text NOT NULL DEFAULT 'member',
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT accounts_role_check CHECK (role IN ('admin', 'member'))
        );

        CREATE TABLE api_keys (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            key_hash text NOT NULL UNIQUE,
            prefix text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        );

        CREATE TABLE areas (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            account_id uuid REFERENCES accounts (id) ON DELETE SET NULL,
            name text NOT NULL,
            geom geometry(GEOMETRY, 4326) NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX areas_geom_gist ON areas USING gist (geom);

        CREATE TABLE gpus (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            uuid text NOT NULL UNIQUE,
            name text NOT NULL,
            total_mem_mb integer,
            compute_capability text,
            simulated boolean NOT NULL DEFAULT false
        );

        CREATE TABLE jobs (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text NOT NULL,
            params jsonb NOT NULL DEFAULT '{}'::jsonb,
            priority integer NOT NULL DEFAULT 0,
            state text NOT NULL DEFAULT 'queued',
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            submitted_by text NOT NULL,
            account_id uuid NOT NULL REFERENCES accounts (id),
            area_id uuid REFERENCES areas (id),
            aoi geometry(GEOMETRY, 4326) NOT NULL,
            zoom integer NOT NULL,
            tiles_total integer,
            tiles_done integer NOT NULL DEFAULT 0,
            dispatched_at timestamptz,
            dagster_run_id text,
            correlation_id text,
            error text,
            CONSTRAINT jobs_state_check
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled'))
        );
        CREATE INDEX jobs_state_idx ON jobs (state);
        CREATE INDEX jobs_account_created_idx ON jobs (account_id, created_at);
        -- The dispatcher's hot query: queued jobs by priority, oldest first.
        CREATE INDEX jobs_queued_idx ON jobs (priority DESC, created_at) WHERE state = 'queued';

        CREATE TABLE runs (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            gpu_id uuid REFERENCES gpus (id),
            dagster_run_id text NOT NULL UNIQUE,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            state text NOT NULL DEFAULT 'running',
            exit_code integer,
            metrics jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX runs_job_id_idx ON runs (job_id);

        CREATE TABLE events (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            type text NOT NULL,
            account_id uuid,
            job_id uuid,
            run_id uuid,
            payload jsonb NOT NULL DEFAULT '{}'::jsonb,
            ts timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX events_job_id_idx ON events (job_id, id);
        CREATE INDEX events_account_id_idx ON events (account_id, id);

        CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'events is append-only (% refused)', TG_OP;
        END $$;
        CREATE TRIGGER events_append_only
            BEFORE UPDATE OR DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION events_append_only();

        CREATE TABLE tiles (
            job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            z integer NOT NULL,
            x integer NOT NULL,
            y integer NOT NULL,
            footprint geometry(POLYGON, 4326) NOT NULL,
            CONSTRAINT tiles_pkey PRIMARY KEY (job_id, z, x, y)
        );
        CREATE INDEX tiles_footprint_gist ON tiles USING gist (footprint);

        CREATE TABLE tile_results (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id uuid NOT NULL,
            z integer NOT NULL,
            x integer NOT NULL,
            y integer NOT NULL,
            run_id uuid REFERENCES runs (id) ON DELETE SET NULL,
            class text NOT NULL,
            confidence double precision NOT NULL,
            inference_ms double precision,
            device text,
            model_version text,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT tile_results_job_tile_key UNIQUE (job_id, z, x, y),
            CONSTRAINT tile_results_tile_fkey FOREIGN KEY (job_id, z, x, y)
                REFERENCES tiles (job_id, z, x, y) ON DELETE CASCADE
        );
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE tile_results;
        DROP TABLE tiles;
        DROP TRIGGER events_append_only ON events;
        DROP TABLE events;
        DROP FUNCTION events_append_only();
        DROP TABLE runs;
        DROP TABLE jobs;
        DROP TABLE gpus;
        DROP TABLE areas;
        DROP TABLE api_keys;
        DROP TABLE accounts;
        """
    )
