"""The words every part uses for a job, defined once: its states, the event types of its log, the
modes and defaults of a submission, and the models it may name.

The API publishes them in its contract (enums and defaults in `openapi/spec.yaml`, `GET /models`),
the dashboard takes them from the types generated from it, and the CLI and Dagster import them here.
"""

JOB_STATES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "canceled"})

# What a job's log shows (`GET /jobs/{id}/logs`, the stream's `logs` topic): its lines and its states.
LOG_EVENT_TYPES = ("job.log", "job.state")

# `parallel`: every device at once, stealing batches; `serial`: one device.
JOB_MODES = ("serial", "parallel")
DEFAULT_MODE = "parallel"
DEFAULT_BATCH_SIZE = 32

# Models a job may name. The trained weights themselves are Dagster assets.
LANDCOVER_CNN = "landcover-cnn"  # constellation_core.inference.model
MODELS: dict[str, str] = {
    LANDCOVER_CNN: "Small CNN classifying tiles as water, vegetation, urban, bare or cloud",
}
DEFAULT_MODEL = LANDCOVER_CNN
