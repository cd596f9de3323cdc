"""Table definitions for the system of record (SQLAlchemy Core).

The schema itself is owned by the Alembic migrations in db/migrations; these definitions mirror it
for queries, and tests/test_migrations.py fails if the two drift apart.
"""

from __future__ import annotations

from geoalchemy2 import Geometry
from sqlalchemy import (
    Date,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

ROLES = ("admin", "member")


def _uuid_pk() -> Column:
    return Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()"))


def _created_at() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


accounts = Table(
    "accounts",
    metadata,
    _uuid_pk(),
    Column("name", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False, server_default="member"),
    _created_at(),
    Column("disabled_at", DateTime(timezone=True)),  # set while disabled: its keys do not authenticate
    # An operator's overrides of the member defaults (api/accounts/limits.py); {} = the defaults.
    Column("limits", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint("role IN ('admin', 'member')", name="accounts_role_check"),
)

api_keys = Table(
    "api_keys",
    metadata,
    _uuid_pk(),
    Column("account_id", UUID(as_uuid=True), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    # SHA-256 of the key: keys are 256-bit random secrets, so a fast hash is enough and lookups stay O(1).
    Column("key_hash", Text, nullable=False, unique=True),
    # The first characters of the key, shown in listings so people can tell keys apart.
    Column("prefix", Text, nullable=False),
    _created_at(),
    Column("revoked_at", DateTime(timezone=True)),
    Column("name", Text),  # the operator's label for the key
    Column("last_used_at", DateTime(timezone=True)),  # refreshed at most every KEY_CACHE_S per key
    Index("api_keys_account_idx", "account_id", "created_at"),
)

areas = Table(
    "areas",
    metadata,
    _uuid_pk(),
    Column("account_id", UUID(as_uuid=True), ForeignKey("accounts.id", ondelete="SET NULL")),
    Column("name", Text, nullable=False),
    Column("geom", Geometry("GEOMETRY", srid=4326, spatial_index=False), nullable=False),
    _created_at(),
    Index("areas_geom_gist", "geom", postgresql_using="gist"),
    Index("areas_account_created_idx", "account_id", "created_at"),
)

gpus = Table(
    "gpus",
    metadata,
    _uuid_pk(),
    Column("uuid", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("total_mem_mb", Integer),
    Column("compute_capability", Text),
    # Simulated devices compute on the CPU; they are always labelled as such.
    Column("simulated", Boolean, nullable=False, server_default=text("false")),
    # The machine (Ray node) the device is on, and when its worker or node went away (NULL: serving).
    Column("host", Text),
    Column("ray_node_id", Text),
    Column("gone_at", DateTime(timezone=True)),
    # The device as its worker described it (`devices.from_spec`): a cluster's pools are built from it.
    Column("spec", JSONB),
)

jobs = Table(
    "jobs",
    metadata,
    _uuid_pk(),
    Column("name", Text, nullable=False),
    Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("state", Text, nullable=False, server_default="queued"),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    # When its first batch was done (0013): the submit → first batch wait.
    Column("first_batch_at", DateTime(timezone=True)),
    # The device a serial job's run is bound to, set as the run is launched (0014; NULL: every device).
    Column("device_uuid", Text),
    Column("submitted_by", Text, nullable=False),
    Column("account_id", UUID(as_uuid=True), ForeignKey("accounts.id"), nullable=False),
    Column("area_id", UUID(as_uuid=True), ForeignKey("areas.id")),
    Column("aoi", Geometry("GEOMETRY", srid=4326, spatial_index=False), nullable=False),
    Column("zoom", Integer, nullable=False),
    Column("tiles_total", Integer),
    Column("tiles_done", Integer, nullable=False, server_default="0"),
    # The `seq` of the job's latest event (migration 0006): bumping it orders the job's events.
    Column("event_seq", BigInteger, nullable=False, server_default="0"),
    # When the dispatch sensor last asked Dagster for a run; the run key makes repeats harmless.
    Column("dispatched_at", DateTime(timezone=True)),
    Column("dagster_run_id", Text),
    Column("correlation_id", Text),
    # The W3C trace context of the submitting request: every span of the job joins its trace (0012).
    Column("traceparent", Text),
    Column("error", Text),
    # POST /jobs with an Idempotency-Key returns the job the key first created (per account).
    Column("idempotency_key", Text),
    Column("request_hash", Text),
    CheckConstraint(
        "state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')", name="jobs_state_check"
    ),
    Index("jobs_state_idx", "state"),
    Index("jobs_idempotency_key_idx", "account_id", "idempotency_key", unique=True,
          postgresql_where=text("idempotency_key IS NOT NULL")),
    Index("jobs_created_id_idx", text("created_at DESC"), text("id DESC")),
    Index("jobs_priority_created_id_idx", text("priority DESC"), text("created_at DESC"), text("id DESC")),
    Index("jobs_name_id_idx", "name", "id"),
    Index("jobs_account_created_idx", "account_id", "created_at"),
    Index("jobs_account_active_idx", "account_id", postgresql_where=text("state IN ('queued', 'running')")),
    Index(
        "jobs_queued_idx",
        text("priority DESC"),
        "created_at",
        postgresql_where=text("state = 'queued'"),
    ),
)

runs = Table(
    "runs",
    metadata,
    _uuid_pk(),
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("gpu_id", UUID(as_uuid=True), ForeignKey("gpus.id")),
    Column("dagster_run_id", Text, nullable=False, unique=True),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("state", Text, nullable=False, server_default="running"),
    Column("exit_code", Integer),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Index("runs_job_id_idx", "job_id"),
)

events = Table(
    "events",
    metadata,
    # Append-only (a trigger refuses UPDATE and DELETE); clients resume from the last id they saw.
    # `next_event_id()` hands ids out (events.settled_event_id says up to which they have settled).
    Column("id", BigInteger, primary_key=True, autoincrement=False, server_default=text("next_event_id()")),
    Column("type", Text, nullable=False),
    # The account whose job the event concerns, so members' streams carry only their own.
    Column("account_id", UUID(as_uuid=True)),
    Column("job_id", UUID(as_uuid=True)),
    Column("run_id", UUID(as_uuid=True)),
    Column("payload", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("ts", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # 1, 2, 3 … per job, in commit order (null for events of no job).
    Column("seq", BigInteger),
    Index("events_job_id_idx", "job_id", "id"),
    Index("events_account_id_idx", "account_id", "id"),
)

tiles = Table(
    "tiles",
    metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("z", Integer, nullable=False),
    Column("x", Integer, nullable=False),
    Column("y", Integer, nullable=False),
    Column("footprint", Geometry("POLYGON", srid=4326, spatial_index=False), nullable=False),
    Column("chunk_no", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("job_id", "z", "x", "y", name="tiles_pkey"),
    Index("tiles_footprint_gist", "footprint", postgresql_using="gist"),
)

tile_results = Table(
    "tile_results",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("job_id", UUID(as_uuid=True), nullable=False),
    Column("z", Integer, nullable=False),
    Column("x", Integer, nullable=False),
    Column("y", Integer, nullable=False),
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.id", ondelete="SET NULL")),
    Column("class", Text, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("inference_ms", Float),
    Column("device", Text),
    Column("model_version", Text),
    Column("gpu_id", UUID(as_uuid=True), ForeignKey("gpus.id")),
    _created_at(),
    Index("tile_results_created_at_idx", "created_at"),
    # One result per job and tile: a retried or resumed run upserts, never duplicates.
    UniqueConstraint("job_id", "z", "x", "y", name="tile_results_job_tile_key"),
    ForeignKeyConstraint(
        ["job_id", "z", "x", "y"],
        ["tiles.job_id", "tiles.z", "tiles.x", "tiles.y"],
        ondelete="CASCADE",
        name="tile_results_tile_fkey",
    ),
)

tile_chunks = Table(
    "tile_chunks",
    metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("chunk_no", Integer, nullable=False),
    Column("tiles", Integer, nullable=False),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("device_uuid", Text),
    # the device's compute interval for this batch (the device timeline)
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("job_id", "chunk_no", name="tile_chunks_pkey"),
    CheckConstraint("state IN ('pending', 'done')", name="tile_chunks_state_check"),
    Index("tile_chunks_pending_idx", "job_id", "chunk_no", postgresql_where=text("state = 'pending'")),
    Index("tile_chunks_recent_idx", "finished_at", postgresql_where=text("state = 'done'")),
)

steps = Table(
    "steps",
    metadata,
    _uuid_pk(),
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.id", ondelete="SET NULL")),
    Column("gpu_id", UUID(as_uuid=True), ForeignKey("gpus.id"), nullable=False),
    Column("step_key", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("cuda_visible_devices", Text),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()),
    Column("finished_at", DateTime(timezone=True)),
    Column("tiles", Integer, nullable=False, server_default="0"),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # The model the job's batches run with on this device (the device worker loads each version once).
    Column("model_version", Text),
    Column("model_uri", Text),
    # The span that admitted the job to this device: the parent of the device's batch spans (0012).
    Column("traceparent", Text),
    Index("steps_gpu_started_idx", "gpu_id", "started_at"),
    Index("steps_open_idx", "gpu_id", "started_at", postgresql_where=text("finished_at IS NULL")),
    Index("steps_job_id_idx", "job_id"),
)

# Per-account daily totals of jobs, tiles, device-seconds and energy, kept current by statement-level
# triggers (migration 0004); usage_go sums a window's days instead of scanning runs and results.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("account_id", UUID(as_uuid=True), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("jobs", BigInteger, nullable=False, server_default="0"),
    Column("tiles", BigInteger, nullable=False, server_default="0"),
    Column("gpu_seconds", Float(precision=53), nullable=False, server_default="0"),
    Column("energy_joules", Float(precision=53), nullable=False, server_default="0"),
    Index("usage_daily_day_idx", "day"),
)
