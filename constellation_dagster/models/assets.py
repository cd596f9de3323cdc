"""The tile CNN as a Dagster asset: trained by the project on synthetic labelled tiles, versioned,
with its held-out accuracy as metadata and an asset check that holds it to a floor."""

from pathlib import Path

import dagster as dg

from constellation_core.settings import get_settings

MODEL_ASSET = dg.AssetKey("landcover_model")
MIN_ACCURACY = 0.85


class ModelTrainingConfig(dg.Config):
    epochs: int = 6
    train_patches: int = 3000
    test_patches: int = 600
    seed: int = 0


@dg.asset(
    key=MODEL_ASSET,
    group_name="models",
    description="Small CNN classifying map tiles as water / vegetation / urban / bare / cloud.",
    kinds={"pytorch"},
)
def landcover_model(context: dg.AssetExecutionContext, config: ModelTrainingConfig) -> dg.MaterializeResult:
    from constellation_core.inference.imagery import labelled_patches, synthesize
    from constellation_core.inference.model import train

    # Train and test on different synthetic scenes, so the accuracy is held out for real.
    train_scene = synthesize(1200, 1200, seed=config.seed + 1)
    test_scene = synthesize(800, 800, seed=config.seed + 2)
    train_x, train_y = labelled_patches(train_scene, config.train_patches, seed=config.seed + 3)
    test_x, test_y = labelled_patches(test_scene, config.test_patches, seed=config.seed + 4)
    trained = train(train_x, train_y, test_x, test_y, epochs=config.epochs, seed=config.seed)
    path = trained.save(get_settings().local_dir / "models")
    context.log.info(f"trained {trained.version}: held-out accuracy {trained.accuracy:.3f}")
    return dg.MaterializeResult(
        metadata={
            "version": trained.version,
            "accuracy": dg.MetadataValue.float(trained.accuracy),
            "path": dg.MetadataValue.path(str(path)),
            "bytes": path.stat().st_size,
            "train_seconds": dg.MetadataValue.float(round(trained.train_seconds, 2)),
            "train_patches": config.train_patches,
            "test_patches": config.test_patches,
        },
    )


@dg.asset_check(asset=MODEL_ASSET, description=f"Held-out accuracy is at least {MIN_ACCURACY}.")
def landcover_model_accuracy(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(MODEL_ASSET)
    accuracy = event.asset_materialization.metadata["accuracy"].value
    return dg.AssetCheckResult(passed=accuracy >= MIN_ACCURACY, metadata={"accuracy": accuracy})


class ModelNotTrained(RuntimeError):
    pass


def latest_model(instance: dg.DagsterInstance) -> tuple[Path, str]:
    """Path and version of the latest materialized model."""
    event = instance.get_latest_materialization_event(MODEL_ASSET)
    if event is None:
        raise ModelNotTrained("no trained model: materialize the `landcover_model` asset first (Dagit → Assets)")
    metadata = event.asset_materialization.metadata
    path = Path(metadata["path"].value)
    if not path.exists():
        raise ModelNotTrained(f"the latest model file {path} is missing: materialize `landcover_model` again")
    return path, metadata["version"].value
