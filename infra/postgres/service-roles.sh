#!/bin/sh
# The service roles of Constellation, logging in with the passwords compose passes in (run once by the
# postgis image on an empty data directory). Their rights come from the migrations (0011) and from
# `constellation-dev setup` (Dagster's storage); `make demo` does the same for its own server.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v api="$CONSTELLATION_API_PASSWORD" -v dagster="$CONSTELLATION_DAGSTER_PASSWORD" \
  -v usage="$CONSTELLATION_USAGE_PASSWORD" <<'SQL'
CREATE ROLE constellation_api LOGIN PASSWORD :'api';
CREATE ROLE constellation_dagster LOGIN PASSWORD :'dagster';
CREATE ROLE constellation_usage LOGIN PASSWORD :'usage';
SQL
