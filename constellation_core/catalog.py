"""Models a job may name. The trained weights themselves are Dagster assets."""

MODELS: dict[str, str] = {
    "landcover-cnn": "Small CNN classifying tiles as water, vegetation, urban, bare or cloud",
}
DEFAULT_MODEL = "landcover-cnn"
