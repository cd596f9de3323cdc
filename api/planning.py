"""What the API computes about an area, run in the planning processes (`api.offload`): plain data in,
plain data out, refusals as values (they cross a process boundary by pickle)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import shapely
from shapely.geometry import mapping

from constellation_core.geometry import InvalidGeometry, area_from_geojson
from constellation_core.tiles import TooComplex, TooManyTiles, plan_tiles


@dataclass(frozen=True)
class Refused:
    """Why an area cannot be planned: `kind` is the problem's error type, `message` its reason."""

    kind: str
    message: str


@dataclass(frozen=True)
class Planned:
    """A planned area, ready to store and to show: nothing about it is left to compute on the event loop."""

    aoi_wkb: bytes  # the area as one geometry (WKB, EPSG:4326)
    tiles: int
    geojson: str  # the area as GeoJSON text


# An area this small is planned on the event loop, in well under a millisecond: a process round trip
# would cost more than the work, and under a burst of submissions the (niced) planning processes starve
# behind the API itself. Anything larger, stranger or malformed goes to a planning process.
INLINE_MAX_POSITIONS = 64
INLINE_MAX_TILES = 64  # tiles of the area's bounding box at the job's zoom


def cheap_to_plan(area_geojson: Any, zoom: int) -> bool:
    """Whether `plan_job_area` on this area certainly costs next to nothing: one plain Polygon or
    MultiPolygon (bare or as a Feature), no `crs`, at most INLINE_MAX_POSITIONS positions of two
    finite numbers, and a bounding box of at most INLINE_MAX_TILES tiles at `zoom`. Walks at most
    that many positions."""
    geometry = area_geojson
    if isinstance(geometry, dict) and geometry.get("type") == "Feature":
        geometry = geometry.get("geometry")
    if not isinstance(geometry, dict) or "crs" in geometry or "crs" in area_geojson:
        return False
    coordinates = geometry.get("coordinates")
    if geometry.get("type") == "Polygon":
        polygons = [coordinates]
    elif geometry.get("type") == "MultiPolygon":
        polygons = coordinates
    else:
        return False
    lons: list[float] = []
    lats: list[float] = []
    for polygon in polygons if isinstance(polygons, list) else [None]:
        for ring in polygon if isinstance(polygon, list) else [None]:
            if not isinstance(ring, list) or len(lons) + len(ring) > INLINE_MAX_POSITIONS:
                return False
            for position in ring:
                if not (isinstance(position, list) and len(position) == 2
                        and all(type(v) in (int, float) and math.isfinite(v) for v in position)):
                    return False
                lons.append(position[0])
                lats.append(position[1])
    if not lons or not 0 <= zoom <= 30:
        return False
    n = 2**zoom

    def row(lat: float) -> int:
        lat = math.radians(min(max(lat, -85.0511287798), 85.0511287798))
        return int((1.0 - math.asinh(math.tan(lat)) / math.pi) / 2.0 * n)

    columns = int((max(lons) + 180.0) / 360.0 * n) - int((min(lons) + 180.0) / 360.0 * n) + 1
    rows = row(min(lats)) - row(max(lats)) + 1
    return columns * rows <= INLINE_MAX_TILES


def plan_job_area(area_geojson: dict[str, Any], zoom: int, max_tiles: int) -> Planned | Refused:
    """The area parsed (one Polygon/MultiPolygon) and how many tiles cover it at this zoom."""
    try:
        aoi = area_from_geojson(area_geojson)
        tiles = len(plan_tiles(aoi, zoom, max_tiles))
        return Planned(shapely.to_wkb(aoi), tiles, json.dumps(mapping(aoi), separators=(",", ":")))
    except InvalidGeometry as exc:
        return Refused("geometry", str(exc))
    except TooManyTiles as exc:
        return Refused("too_many_tiles", f"{exc}; choose a smaller area or a lower zoom")
    except TooComplex as exc:
        return Refused("too_complex", str(exc))


def area_geometry(geojson: dict[str, Any], max_deg2: float) -> dict[str, Any] | Refused:
    """A stored area's geometry (GeoJSON), checked as for a job plus a size limit in square degrees."""
    try:
        return mapping(area_from_geojson(geojson, max_deg2=max_deg2))
    except InvalidGeometry as exc:
        return Refused("geometry", str(exc))
