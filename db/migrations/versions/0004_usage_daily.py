"""Per-account daily usage totals, kept by triggers, so usage reads never scan runs or results.

A submission is one autocommit statement, so the (account, day) row its trigger updates is locked
only for that statement's commit.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- One row per account and UTC day: jobs submitted, tiles inferred, device-seconds and energy
        -- of the runs that started that day. Statement-level triggers add each statement's rows in
        -- one upsert per (account, day), so a batch of 32 results costs one small write.
        CREATE TABLE usage_daily (
            account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            day date NOT NULL,
            jobs bigint NOT NULL DEFAULT 0,
            tiles bigint NOT NULL DEFAULT 0,
            gpu_seconds double precision NOT NULL DEFAULT 0,
            energy_joules double precision NOT NULL DEFAULT 0,
            PRIMARY KEY (account_id, day)
        );
        CREATE INDEX usage_daily_day_idx ON usage_daily (day);

        CREATE FUNCTION usage_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO usage_daily AS u (account_id, day, jobs)
            SELECT account_id, (created_at AT TIME ZONE 'UTC')::date, count(*) FROM new_rows GROUP BY 1, 2
            ON CONFLICT (account_id, day) DO UPDATE SET jobs = u.jobs + excluded.jobs;
            RETURN NULL;
        END $$;
        CREATE TRIGGER jobs_usage AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION usage_count_jobs();

        CREATE FUNCTION usage_count_tiles() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO usage_daily AS u (account_id, day, tiles)
            SELECT j.account_id, (n.created_at AT TIME ZONE 'UTC')::date, count(*)
            FROM new_rows n JOIN jobs j ON j.id = n.job_id GROUP BY 1, 2
            ON CONFLICT (account_id, day) DO UPDATE SET tiles = u.tiles + excluded.tiles;
            RETURN NULL;
        END $$;
        CREATE TRIGGER tile_results_usage AFTER INSERT ON tile_results REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION usage_count_tiles();

        -- A run counts once, when it has finished: inserted finished, or updated to finished.
        CREATE FUNCTION usage_add_finished_runs(finished uuid[]) RETURNS void LANGUAGE sql AS $$
            INSERT INTO usage_daily AS u (account_id, day, gpu_seconds, energy_joules)
            SELECT j.account_id, (r.started_at AT TIME ZONE 'UTC')::date,
                   sum(coalesce((r.metrics->>'gpu_seconds')::float8, extract(epoch FROM r.finished_at - r.started_at))),
                   sum(coalesce((r.metrics->>'energy_joules')::float8, 0))
            FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.id = ANY(finished) GROUP BY 1, 2
            ON CONFLICT (account_id, day) DO UPDATE
                SET gpu_seconds = u.gpu_seconds + excluded.gpu_seconds,
                    energy_joules = u.energy_joules + excluded.energy_joules;
        $$;
        CREATE FUNCTION usage_runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM usage_add_finished_runs(ARRAY(SELECT n.id FROM new_rows n WHERE n.finished_at IS NOT NULL));
            RETURN NULL;
        END $$;
        CREATE FUNCTION usage_runs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM usage_add_finished_runs(ARRAY(
                SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
                WHERE n.finished_at IS NOT NULL AND o.finished_at IS NULL));
            RETURN NULL;
        END $$;
        CREATE TRIGGER runs_usage_insert AFTER INSERT ON runs REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION usage_runs_inserted();
        CREATE TRIGGER runs_usage_update AFTER UPDATE ON runs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION usage_runs_updated();

        -- What is already there.
        INSERT INTO usage_daily AS u (account_id, day, jobs)
        SELECT account_id, (created_at AT TIME ZONE 'UTC')::date, count(*) FROM jobs GROUP BY 1, 2;
        INSERT INTO usage_daily AS u (account_id, day, tiles)
        SELECT j.account_id, (t.created_at AT TIME ZONE 'UTC')::date, count(*)
        FROM tile_results t JOIN jobs j ON j.id = t.job_id GROUP BY 1, 2
        ON CONFLICT (account_id, day) DO UPDATE SET tiles = u.tiles + excluded.tiles;
        SELECT usage_add_finished_runs(ARRAY(SELECT r.id FROM runs r WHERE r.finished_at IS NOT NULL));
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER runs_usage_update ON runs;
        DROP TRIGGER runs_usage_insert ON runs;
        DROP TRIGGER tile_results_usage ON tile_results;
        DROP TRIGGER jobs_usage ON jobs;
        DROP FUNCTION usage_runs_updated();
        DROP FUNCTION usage_runs_inserted();
        DROP FUNCTION usage_add_finished_runs(uuid[]);
        DROP FUNCTION usage_count_tiles();
        DROP FUNCTION usage_count_jobs();
        DROP TABLE usage_daily;
        """
    )
