"""DuckDB over the Parquet exports, with the spatial extension from the `duckdb-extension-spatial`
package (loaded from its file: no network)."""

from __future__ import annotations

from pathlib import Path

import duckdb

import duckdb_extension_spatial

SPATIAL_EXTENSION = next(Path(duckdb_extension_spatial.__file__).parent.glob(
    f"extensions/v{duckdb.__version__}/spatial.duckdb_extension"))


def connect(database: Path | str = ":memory:", *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(database), read_only=read_only, config={"allow_unsigned_extensions": "true"})
    conn.execute(f"LOAD '{SPATIAL_EXTENSION}'")
    return conn
