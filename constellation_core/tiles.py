"""Plan the web-mercator tiles (XYZ) that cover an area of interest."""

from __future__ import annotations

from dataclasses import dataclass

import mercantile
from shapely import Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.prepared import prep

MIN_ZOOM = 1
MAX_ZOOM = 20


class TooManyTiles(ValueError):
    def __init__(self, at_least: int, cap: int) -> None:
        super().__init__(f"the area needs at least {at_least} tiles at this zoom, over the cap of {cap}")
        self.at_least = at_least
        self.cap = cap


@dataclass(frozen=True, order=True)
class Tile:
    z: int
    x: int
    y: int

    @property
    def footprint(self) -> Polygon:
        b = mercantile.bounds(self.x, self.y, self.z)
        return box(b.west, b.south, b.east, b.north)


def _parts(aoi: BaseGeometry) -> list[BaseGeometry]:
    return list(getattr(aoi, "geoms", [aoi]))


def plan_tiles(aoi: BaseGeometry, zoom: int, cap: int) -> list[Tile]:
    """Tiles whose footprint shares area with `aoi` (lon/lat, EPSG:4326), sorted.

    Each polygon part is searched within its own bounds, so a multipolygon split at the
    antimeridian does not sweep the whole globe. Tiles that only touch the area are left out.
    Raises TooManyTiles when more than `cap` tiles would be needed.
    """
    found: set[Tile] = set()
    for part in _parts(aoi):
        prepared = prep(part)
        west, south, east, north = part.bounds
        for t in mercantile.tiles(west, south, east, north, zoom):
            tile = Tile(t.z, t.x, t.y)
            if tile in found:
                continue
            footprint = tile.footprint
            if prepared.intersects(footprint) and part.intersection(footprint).area > 0:
                found.add(tile)
                if len(found) > cap:
                    raise TooManyTiles(len(found), cap)
    return sorted(found)
