"""Plan the web-mercator tiles (XYZ) that cover an area of interest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mercantile
import numpy as np
import shapely
from shapely import Polygon, box
from shapely.geometry.base import BaseGeometry

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


class TooComplex(ValueError):
    """The area's outline would cost more to plan than any area within the cap should."""


# Quadtree nodes visited per tile of the cap: a plain area needs about 3 per tile found; a very
# ragged outline more. Beyond this the area is refused rather than planned at any cost.
NODES_PER_CAPPED_TILE = 40


def _tile_coords(lon: np.ndarray, lat: np.ndarray, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional XYZ tile coordinates of lon/lat positions."""
    n = 2.0**zoom
    lat = np.radians(np.clip(lat, -85.0511287798, 85.0511287798))
    x = (lon + 180.0) / 360.0 * n
    y = (1.0 - np.log(np.tan(lat) + 1.0 / np.cos(lat)) / np.pi) / 2.0 * n
    return x, y


def at_least_tiles(part: BaseGeometry, zoom: int) -> int:
    """A lower bound of the tiles a connected part needs at this zoom, in O(vertices): its web-mercator
    area in tiles, and the rows and columns it spans (a connected area crosses every row and column
    between its extremes with some area; the first and last may be only touched)."""
    west, south, east, north = part.bounds
    (x0, x1), (y1, y0) = _tile_coords(np.array([west, east]), np.array([south, north]), zoom)
    spans = max(int(math.floor(x1)) - int(math.floor(x0)) - 1, int(math.floor(y1)) - int(math.floor(y0)) - 1, 1)
    # Edges are straight in lon/lat and curve in mercator: cut them into ≤ 0.5° pieces first, so the
    # mercator polygon follows the true outline; 10 % slack covers what is left.
    densified = shapely.segmentize(part, 0.5)
    mercator = shapely.transform(densified, lambda xy: np.column_stack(_tile_coords(xy[:, 0], xy[:, 1], zoom)))
    return max(spans, int(mercator.area * 0.9))


def plan_tiles(aoi: BaseGeometry, zoom: int, cap: int) -> list[Tile]:
    """Tiles whose footprint shares area with `aoi` (lon/lat, EPSG:4326), sorted.

    Each polygon part is searched on its own, so a multipolygon split at the antimeridian does not
    sweep the whole globe. Tiles that only touch the area are left out. The work follows the tiles
    found, not the bounding box: a quadtree over the part's tile range clips the part to each node
    (GEOS's rectangle clip) and descends only where the clip keeps area, so a thin diagonal sliver
    costs about its own tiles, and a node the part covers whole is taken at once (a large compact area
    costs about its outline). Before any of that, a bound from the part's extent and area refuses
    what cannot fit the cap.

    Raises TooManyTiles when more than `cap` tiles would be needed, TooComplex when the outline
    would take more than NODES_PER_CAPPED_TILE × cap clips to plan.
    """
    found: set[Tile] = set()
    parts = _parts(aoi)
    for part in parts:
        if _bounding_box_tiles(part, zoom) <= cap:
            continue  # no tighter bound needed (it costs a densify and a projection of the outline)
        bound = at_least_tiles(part, zoom)
        if bound > cap:
            raise TooManyTiles(bound, cap)
    budget = NODES_PER_CAPPED_TILE * max(cap, 1)
    for part in parts:
        budget = _quadtree(part, zoom, cap, found, budget)
    return sorted(found)


def _bounding_box_tiles(part: BaseGeometry, zoom: int) -> int:
    """The tiles of the part's bounding box at this zoom: an upper bound of the tiles it needs."""
    west, south, east, north = part.bounds
    top_left = mercantile.tile(west, north, zoom)
    bottom_right = mercantile.tile(min(east, 180.0 - 1e-9), max(south, -85.0511287798), zoom)
    return (bottom_right.x - top_left.x + 1) * (bottom_right.y - top_left.y + 1)


def _lon(x: int, n: int) -> float:
    """The west edge of tile column x (mercantile's formula)."""
    return x / n * 360.0 - 180.0


def _lat(y: int, n: int) -> float:
    """The north edge of tile row y (mercantile's formula)."""
    return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))


def _quadtree(part: BaseGeometry, zoom: int, cap: int, found: set[Tile], budget: int) -> int:
    west, south, east, north = part.bounds
    top_left = mercantile.tile(west, north, zoom)
    bottom_right = mercantile.tile(min(east, 180.0 - 1e-9), max(south, -85.0511287798), zoom)
    n = 2**zoom
    last = n - 1
    stack = [(part, max(top_left.x - 1, 0), min(bottom_right.x + 1, last),
              max(top_left.y - 1, 0), min(bottom_right.y + 1, last))]
    while stack:
        geom, x0, x1, y0, y1 = stack.pop()
        budget -= 1
        if budget < 0:
            raise TooComplex(
                f"the area's outline is too detailed to plan within the cap of {cap} tiles; simplify it"
            )
        west, south, east, north = _lon(x0, n), _lat(y1 + 1, n), _lon(x1 + 1, n), _lat(y0, n)
        clipped = shapely.clip_by_rect(geom, west, south, east, north)
        area = clipped.area
        if area <= 0:
            continue
        # A single tile with area is found; so is every tile of a node that has less uncovered than
        # half its smallest tile.
        smallest_tile = (east - west) / (x1 - x0 + 1) * min(north - _lat(y0 + 1, n), _lat(y1, n) - south)
        if (x0 == x1 and y0 == y1) or (east - west) * (north - south) - area < smallest_tile / 2:
            found.update(Tile(zoom, x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1))
            if len(found) > cap:
                raise TooManyTiles(len(found), cap)
        elif x1 - x0 >= y1 - y0:
            mid = (x0 + x1) // 2
            stack += [(clipped, mid + 1, x1, y0, y1), (clipped, x0, mid, y0, y1)]
        else:
            mid = (y0 + y1) // 2
            stack += [(clipped, x0, x1, mid + 1, y1), (clipped, x0, x1, y0, mid)]
    return budget
