"""Code shared by the API and the Dagster code location: settings, tables, events, tiles.

Nothing in this package imports Dagster or FastAPI, so both sides can use it freely.
"""
