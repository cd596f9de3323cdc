"""Constellation's Dagster code location (loaded by workspace.yaml)."""
