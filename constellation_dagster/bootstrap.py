"""One-time preparation of a Dagster instance for Constellation: device pools and a trained model."""

import dagster as dg

from constellation_core.devices import Device
from constellation_dagster.models.assets import (
    MODEL_ASSET,
    ModelTrainingConfig,
    landcover_model,
    landcover_model_accuracy,
)

# A device's pool limit is how many jobs it holds at once: the one its worker runs and the next, so
# the worker goes from one job's last batch to the next job's first without waiting for Dagster.
# The worker still runs one batch at a time (a device is never oversubscribed). Small jobs need
# several in flight to hide a run's start and end (P9, one device: 4 slots 0.42, 8 slots 0.47).
DEFAULT_SLOTS = 8


def set_device_pools(instance: dg.DagsterInstance, devices: list[Device], slots: int = DEFAULT_SLOTS) -> None:
    """Give each device's pool its limit explicitly, so pools and limits show in Dagit from the start."""
    for device in devices:
        instance.event_log_storage.set_concurrency_slots(device.pool, slots)


def ensure_model(instance: dg.DagsterInstance, config: ModelTrainingConfig | None = None) -> bool:
    """Materialize the model asset (and run its check) unless a materialization exists; True if trained now."""
    if instance.get_latest_materialization_event(MODEL_ASSET) is not None:
        return False
    result = dg.materialize(
        [landcover_model, landcover_model_accuracy],
        instance=instance,
        run_config=dg.RunConfig(ops={"landcover_model": config or ModelTrainingConfig()}),
        tags={"constellation/reason": "bootstrap"},
    )
    if not result.success:
        raise RuntimeError("training the landcover model failed; see the run in Dagit")
    return True
