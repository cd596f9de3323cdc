# Constellation — two commands do all the set-up on a fresh machine:
#   make demo   runs the whole product with a seeded demo (Ctrl-C or `make stop` stops it)
#   make test   runs every suite against real, throwaway Postgres+PostGIS and NATS
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .local/venv
PY        := $(VENV)/bin/python
DEV       := $(VENV)/bin/constellation-dev
PY_STAMP  := $(VENV)/.installed
PG_MAJOR  := 15
PG_SERVER := /usr/lib/postgresql/$(PG_MAJOR)/bin/postgres
POSTGIS   := /usr/share/postgresql/$(PG_MAJOR)/extension/postgis.control
USAGE_BIN := usage_go/bin/usage
JAEGER_BIN := tools/jaeger/bin/jaeger
GO_SRC    := $(shell find usage_go -name '*.go' -not -path '*/bin/*') usage_go/go.mod usage_go/go.sum
WEB_STAMP := web/node_modules/.package-lock.json

.PHONY: help install web demo dev stop test test-suites test-python test-go test-web openapi generate check-generated clean

help:
	@echo "make demo    run the whole stack with a seeded demo (installs what is missing)"
	@echo "make test    run every test suite (installs what is missing, starts its own services)"
	@echo "make dev     the same stack, reloading on change: API, Dagster code, device workers, dashboard"
	@echo "make stop    stop what 'make demo' or 'make dev' started"
	@echo "make generate regenerate openapi/spec.yaml from the API, then the TS and Go clients from it"

install: $(PY_STAMP) postgres $(USAGE_BIN) $(JAEGER_BIN) $(WEB_STAMP) chromium prometheus

# Node: the web workspace's exact tree from its lock file.
$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error

# Python: one venv, every version pinned by requirements.lock (verified with `pip check`).
$(PY_STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[test]"
	$(PY) -m pip check
	@touch $@

# Debian's PostgreSQL with PostGIS, and PgBouncer in front of it for Dagster's connections, unless
# already there (or DATABASE_URL points elsewhere for the demo).
postgres:
	@if [ -x $(PG_SERVER) ] && [ -f $(POSTGIS) ] && [ -x /usr/sbin/pgbouncer ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "PostgreSQL $(PG_MAJOR) + PostGIS or PgBouncer missing: run as root, or install postgresql-$(PG_MAJOR) postgresql-$(PG_MAJOR)-postgis-3 pgbouncer"; exit 1; \
	fi; \
	echo "installing postgresql-$(PG_MAJOR) + postgresql-$(PG_MAJOR)-postgis-3 + pgbouncer (Debian)"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  postgresql-$(PG_MAJOR) postgresql-$(PG_MAJOR)-postgis-3 pgbouncer >/dev/null
.PHONY: postgres

# Debian's chromium, for the dashboard's browser tests (playwright-core drives it; no browser download).
chromium:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "chromium missing: run as root, or apt-get install chromium"; exit 1; fi; \
	echo "installing chromium (Debian)"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
.PHONY: chromium

# Debian's Prometheus: `make demo` scrapes the stack with it, the e2e tests query it.
prometheus:
	@if [ -x /usr/bin/prometheus ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "prometheus missing: run as root, or apt-get install prometheus"; exit 1; fi; \
	echo "installing prometheus (Debian)"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
.PHONY: prometheus

$(USAGE_BIN): $(GO_SRC)
	cd usage_go && go build -o bin/usage ./cmd/usage

# Jaeger v2, the trace store of `make demo` and the e2e tests, built from the Go module proxy at the
# version tools/jaeger/go.mod pins (a few minutes the first time; Go's build cache keeps it after).
$(JAEGER_BIN): tools/jaeger/go.mod tools/jaeger/go.sum
	cd tools/jaeger && go build -trimpath -o bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger

# The dashboard: a static export the API serves under /app.
WEB_SRC := $(shell find web/app web/src -type f 2>/dev/null) web/next.config.mjs web/package-lock.json
web/out/index.html: $(WEB_STAMP) $(WEB_SRC)
	cd web && NEXT_TELEMETRY_DISABLED=1 npx next build >/dev/null

web: web/out/index.html

demo: $(PY_STAMP) $(USAGE_BIN) $(JAEGER_BIN) web/out/index.html prometheus $(if $(DATABASE_URL),,postgres)
	$(DEV) demo

# The stack for development: the API and Dagster's code reload on change, the dashboard runs from its
# sources in Next.js's dev server (http://127.0.0.1:3100/app/, the API proxied on the same origin).
dev: $(PY_STAMP) $(USAGE_BIN) $(JAEGER_BIN) $(WEB_STAMP) prometheus $(if $(DATABASE_URL),,postgres)
	$(DEV) demo --dev

stop:
	@$(DEV) stop

test: install web
	$(DEV) with-services -- $(MAKE) --no-print-directory test-suites

# Run inside `constellation-dev with-services` (it sets DATABASE_URL, NATS_URL and the admin URL).
test-suites: check-generated test-python test-go test-web

test-python:
	$(PY) -m pytest

test-go:
	cd usage_go && go test -race -count=1 ./...

test-web: $(WEB_STAMP)
	cd web && npm run --silent typecheck && npx vitest run

openapi: $(PY_STAMP)
	$(PY) -m contract.spec > openapi/spec.yaml

# Everything generated from the contract: the spec from the API, then the clients from the spec.
generate: openapi $(WEB_STAMP)
	cd web && npm run --silent gen:api
	cd usage_go && go generate ./internal/api/

# Fails when a committed spec or generated client is stale (run in `make test`).
check-generated: $(PY_STAMP) $(WEB_STAMP)
	$(PY) -m contract.drift

clean:
	rm -rf $(VENV) usage_go/bin tools/jaeger/bin web/node_modules web/out web/.next
