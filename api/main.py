"""The FastAPI application: `uvicorn api.main:app` (or `create_app()` in tests)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from api.admin.router import router as admin_router
from api.analytics.router import router as analytics_router
from api.areas.router import router as areas_router
from api.catalog.router import router as catalog_router
from api.coverage.router import router as coverage_router
from api.errors import install_problem_handlers
from api.events.router import router as events_router
from api.fleet.router import router as fleet_router
from api.gpus.router import router as gpus_router
from api.health.router import router as health_router
from api.imagery.router import router as imagery_router
from api.imagery.tiles import ImageryTiles
from api.jobs.router import router as jobs_router
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.offload import planning_pool
from api.openapi import install_openapi
from api.stream.hub import StreamHub
from api.stream.router import router as stream_router
from api.traces.router import router as traces_router
from api.tracing import trace_queries
from api.usage.router import router as usage_router
from constellation_core import tracing
from constellation_core.bus import connect, ensure_stream, without_credentials
from constellation_core.db import async_engine
from constellation_core.logs import configure_logging
from constellation_core.settings import REPO_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

DASHBOARD = REPO_ROOT / "web" / "out"

MAX_BODY_BYTES = 1024 * 1024
UNTRACED_PATHS = ("/healthz", "/readyz", "/metrics", "/app")
UNTRACED_SEGMENT = "/imagery/"  # map tiles: dozens per view, their latency is in the route histogram


def _route_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        # No overflow: a connection opened past the pool and closed on return pays a SCRAM handshake
        # each time (under a burst of submissions that churn cost the API most of its CPU).
        app.state.engine = async_engine(settings.sync_database_url, pool_size=30, max_overflow=0)
        app.state.hub = hub = StreamHub()
        app.state.nats = await connect(settings.nats_url, name="constellation-api",
                                       reconnected_cb=hub.on_reconnected)
        await ensure_stream(app.state.nats.jetstream())
        app.state.usage_client = httpx.AsyncClient(base_url=settings.usage_base_url, timeout=5)
        app.state.trace_client = httpx.AsyncClient(base_url=settings.jaeger_query_base_url, timeout=5)
        app.state.prometheus_client = httpx.AsyncClient(base_url=settings.prometheus_base_url, timeout=5)
        app.state.imagery = ImageryTiles()
        if traced:
            trace_queries(app.state.engine.sync_engine, app.state.engine.url.database)
            HTTPXClientInstrumentor.instrument_client(app.state.usage_client)
        planning_pool.start()
        await hub.start(app.state.nats, app.state.engine)
        log.info("api started", extra={"nats": without_credentials(settings.nats_url)})
        try:
            yield
        finally:
            await app.state.hub.stop()
            planning_pool.stop()
            await app.state.usage_client.aclose()
            await app.state.trace_client.aclose()
            await app.state.prometheus_client.aclose()
            await app.state.nats.drain()
            await app.state.engine.dispose()

    # Traces (when an OTLP endpoint is configured): FastAPI's own server span per request, named by
    # its route (not for probes, the scraper or the dashboard's files); a span per query
    # (`api.tracing`) and per call to the usage service. FastAPI's spans around each dependency and
    # serializer, its metrics and logs stay off: they cost a third of P3 (the API has its own
    # Prometheus series and JSON logs).
    traced = tracing.setup("constellation-api")
    app = FastAPI(
        telemetry={"tracing": traced, "operation_spans": False, "metrics": False, "logs": False,
                   "exclude": lambda scope: scope["path"].startswith(UNTRACED_PATHS)
                   or UNTRACED_SEGMENT in scope["path"]},
        title="Constellation API",
        version="0.1.0",
        summary="Schedule CNN tile inference over areas of interest on GPUs, and watch it live.",
        lifespan=lifespan,
        generate_unique_id_function=_route_id,
    )
    install_problem_handlers(app)
    install_openapi(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health_router)
    app.include_router(jobs_router)
    app.include_router(areas_router)
    app.include_router(gpus_router)
    app.include_router(fleet_router)
    app.include_router(imagery_router)
    app.include_router(coverage_router)
    app.include_router(catalog_router)
    app.include_router(events_router)
    app.include_router(usage_router)
    app.include_router(analytics_router)
    app.include_router(admin_router)
    app.include_router(traces_router)
    # The dashboard (Next.js static export, `make web`), on the API's origin so it shares the stream.
    if DASHBOARD.is_dir():
        app.mount("/app", StaticFiles(directory=DASHBOARD, html=True), name="dashboard")
    app.include_router(stream_router)
    return app


def app() -> FastAPI:
    """Factory for `uvicorn --factory api.main:app`."""
    settings = get_settings()
    configure_logging("api", settings.log_level)
    return create_app(settings)
