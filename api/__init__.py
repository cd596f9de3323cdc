"""Constellation's HTTP API (FastAPI). It never imports Dagster to serve a request."""
