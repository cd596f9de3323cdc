"""The model asset trains a real CNN, records its accuracy, and its check holds it to the floor."""

from __future__ import annotations

import dagster as dg
import numpy as np

from constellation_core.inference.imagery import CLASSES, labelled_patches, synthesize
from constellation_core.inference.model import TileClassifier
from constellation_dagster.bootstrap import ensure_model
from constellation_dagster.models.assets import MIN_ACCURACY, MODEL_ASSET, ModelTrainingConfig, latest_model


def test_model_asset_materializes_with_accuracy_and_passes_its_check(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSTELLATION_LOCAL_DIR", str(tmp_path))
    from constellation_core.settings import get_settings

    get_settings.cache_clear()
    try:
        with dg.instance_for_test() as instance:
            assert ensure_model(instance, ModelTrainingConfig(epochs=3, train_patches=2000)) is True
            assert ensure_model(instance) is False, "an existing model is not trained again"
            metadata = instance.get_latest_materialization_event(MODEL_ASSET).asset_materialization.metadata
            assert metadata["accuracy"].value >= MIN_ACCURACY
            assert metadata["version"].value.startswith("landcover-cnn@")
            check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(MODEL_ASSET, "landcover_model_accuracy")]
            )
            evaluation = next(iter(check.values())).event.dagster_event.event_specific_data
            assert evaluation.passed

            path, version = latest_model(instance)
            assert path.parent == tmp_path / "models" and version == metadata["version"].value
    finally:
        get_settings.cache_clear()

    # The saved model classifies unseen synthetic tiles well above chance.
    classifier = TileClassifier(path)
    images, labels = labelled_patches(synthesize(600, 600, seed=99), 200, seed=7)
    predicted, confidences = classifier.predict(images)
    hits = np.mean([CLASSES.index(p) == label for p, label in zip(predicted, labels)])
    assert hits > 0.8 and all(0 <= c <= 1 for c in confidences)
