"""Imagery tiles: the pictures the model read, for the maps under the tile results.

`GET /jobs/{id}/imagery/{z}/{x}/{y}.png` serves a job's imagery (its own GeoTIFF, or the demo scene
it was inferred on) with the job's visibility (another member's job: 404); `GET /imagery/...` the demo
scene, for maps that show many jobs (Coverage). Each has a TileJSON (bounds, zooms) for the map.
`?size=64` renders a tile at the model's input size: the chip of what it saw.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Literal
from uuid import UUID

import anyio
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import CurrentAccount, EngineDep
from api.errors import InvalidInput, NotFound
from api.imagery.tiles import TILE_SIZES, Scene
from api.jobs.service import visible
from constellation_core.inference.imagery import ensure_demo_scene
from constellation_core.tables import jobs

router = APIRouter(tags=["imagery"])

MAX_ZOOM = 24
PNG = {200: {"content": {"image/png": {}}, "description": "The tile as a PNG (transparent outside the imagery)"},
       304: {"description": "Not modified (If-None-Match)"}}

Z = Annotated[int, Path(ge=0, le=MAX_ZOOM, description="Web-mercator zoom")]
X = Annotated[int, Path(ge=0, description="Tile column")]
Y = Annotated[int, Path(ge=0, description="Tile row")]
Size = Annotated[int, Query(description=f"Pixels per side, one of {', '.join(map(str, TILE_SIZES))}: 256 for "
                                        "maps, 64 for the model's input")]


class TileJson(BaseModel):
    """A TileJSON 3.0.0 document for a raster source."""

    tilejson: Literal["3.0.0"] = "3.0.0"
    name: str
    tiles: list[str] = Field(description="URL templates, on this API's origin")
    bounds: list[float] = Field(min_length=4, max_length=4, description="west, south, east, north (degrees)")
    minzoom: int
    maxzoom: int = Field(description="The imagery's native zoom: maps scale its tiles up beyond it")


async def _demo_scene(request: Request) -> Scene:
    imagery = request.app.state.imagery
    if imagery.demo_path is None:  # written once, at first use; not looked for again on every tile
        directory = request.app.state.settings.local_dir / "imagery"
        imagery.demo_path = await anyio.to_thread.run_sync(ensure_demo_scene, directory)
    return imagery.scene(imagery.demo_path)


async def _job_scene(request: Request, engine, account, job_id: UUID) -> Scene:
    async with engine.connect() as conn:
        row = (await conn.execute(select(jobs.c.account_id, jobs.c.params["imagery"].astext.label("imagery"))
                                  .where(jobs.c.id == job_id))).mappings().first()
    row = visible(row, account, job_id)
    if not row["imagery"]:
        return await _demo_scene(request)
    path = FilePath(row["imagery"])
    if not path.is_file():
        raise NotFound(f"job {job_id}'s imagery ({path.name}) is no longer on this machine")
    return request.app.state.imagery.scene(path)


async def _png(request: Request, scene: Scene, z: int, x: int, y: int, size: int) -> Response:
    if size not in TILE_SIZES:
        raise InvalidInput(f"size {size} is not offered: ask for one of {', '.join(map(str, TILE_SIZES))}")
    if x >= 2 ** z or y >= 2 ** z:
        raise InvalidInput(f"tile {z}/{x}/{y} does not exist: at zoom {z}, x and y are below {2 ** z}")
    etag = f'"{scene.etag}-{z}-{x}-{y}-{size}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(await request.app.state.imagery.tile(scene, z, x, y, size), media_type="image/png",
                    headers=headers)


def _tilejson(name: str, template: str, scene: Scene) -> TileJson:
    return TileJson(name=name, tiles=[template], bounds=list(scene.bounds), minzoom=max(0, scene.minzoom - 2),
                    maxzoom=scene.maxzoom)


@router.get("/imagery/tilejson.json", response_model=TileJson, name="demo-tilejson")
async def demo_tilejson(request: Request, account: CurrentAccount) -> TileJson:
    """The demo scene's tiles (the imagery jobs are inferred on unless they bring their own)."""
    return _tilejson("demo scene", "/imagery/{z}/{x}/{y}.png", await _demo_scene(request))


@router.get("/imagery/{z}/{x}/{y}.png", response_class=Response, responses=PNG, name="demo-tile")
async def demo_tile(request: Request, account: CurrentAccount, z: Z, x: X, y: Y, size: Size = 256) -> Response:
    return await _png(request, await _demo_scene(request), z, x, y, size)


@router.get("/jobs/{job_id}/imagery/tilejson.json", response_model=TileJson, name="job-tilejson",
            responses={404: {"description": "No such job (or not yours)"}})
async def job_tilejson(job_id: UUID, request: Request, account: CurrentAccount, engine: EngineDep) -> TileJson:
    """The tiles of the imagery this job was inferred on."""
    scene = await _job_scene(request, engine, account, job_id)
    return _tilejson(f"job {job_id}", f"/jobs/{job_id}/imagery/{{z}}/{{x}}/{{y}}.png", scene)


@router.get("/jobs/{job_id}/imagery/{z}/{x}/{y}.png", response_class=Response, name="job-tile",
            responses={**PNG, 404: {"description": "No such job (or not yours)"}})
async def job_tile(job_id: UUID, request: Request, account: CurrentAccount, engine: EngineDep,
                   z: Z, x: X, y: Y, size: Size = 256) -> Response:
    """A tile of the job's imagery; `?size=64` at the model's input size (what it saw for that tile)."""
    return await _png(request, await _job_scene(request, engine, account, job_id), z, x, y, size)
