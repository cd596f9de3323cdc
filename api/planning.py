"""What the API computes about an area, run in the planning processes (`api.offload`): plain data in,
plain data out, refusals as values (they cross a process boundary by pickle)."""

from __future__ import annotations

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
    aoi_wkb: bytes
    tiles: int

    @property
    def aoi(self):
        return shapely.from_wkb(self.aoi_wkb)


def plan_job_area(area_geojson: dict[str, Any], zoom: int, max_tiles: int) -> Planned | Refused:
    """The area parsed (one Polygon/MultiPolygon) and how many tiles cover it at this zoom."""
    try:
        aoi = area_from_geojson(area_geojson)
        return Planned(shapely.to_wkb(aoi), len(plan_tiles(aoi, zoom, max_tiles)))
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
