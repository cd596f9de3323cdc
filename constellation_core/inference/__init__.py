"""The inference core: synthetic imagery, the tile CNN, batching. Plain Python (no Dagster),
so it can be benchmarked and run on a GPU host alone. Imports torch: keep it out of the API."""
