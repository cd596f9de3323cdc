"""Tile planning against an independent computation: brute force over the tile grid."""

from __future__ import annotations

import math

import pytest
from shapely import MultiPolygon, Polygon, box

from constellation_core.tiles import Tile, TooManyTiles, plan_tiles


def _tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    # Standard XYZ formulas, written out here rather than taken from mercantile.
    n = 2**z
    west, east = x / n * 360 - 180, (x + 1) / n * 360 - 180
    north = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))
    south = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (y + 1) / n))))
    return west, south, east, north


def _brute_force(area, z: int) -> list[Tile]:
    n = 2**z
    west, south, east, north = area.bounds
    x0, x1 = int((west + 180) / 360 * n) - 1, int((east + 180) / 360 * n) + 1
    found = []
    for x in range(max(x0, 0), min(x1, n - 1) + 1):
        for y in range(n):
            b = _tile_bounds(z, x, y)
            if b[3] < south or b[1] > north:
                continue
            if area.intersection(box(*b)).area > 0:
                found.append(Tile(z, x, y))
    return sorted(found)


def test_polygon_with_a_hole_leaves_out_tiles_inside_the_hole():
    outer = [(6.0, 46.0), (6.4, 46.0), (6.4, 46.3), (6.0, 46.3), (6.0, 46.0)]
    hole = [(6.1, 46.1), (6.3, 46.1), (6.3, 46.2), (6.1, 46.2), (6.1, 46.1)]
    area = Polygon(outer, [hole])
    planned = plan_tiles(area, 12, cap=10_000)
    assert planned == _brute_force(area, 12)
    solid = plan_tiles(Polygon(outer), 12, cap=10_000)
    assert len(planned) < len(solid), "tiles wholly inside the hole must not be planned"


def test_area_crossing_the_antimeridian_is_planned_on_both_sides():
    area = MultiPolygon([box(179.5, -17.5, 180.0, -16.5), box(-180.0, -17.5, -179.5, -16.5)])
    planned = plan_tiles(area, 9, cap=10_000)
    assert planned == _brute_force(area, 9)
    xs = {t.x for t in planned}
    assert 0 in xs and 2**9 - 1 in xs, "both ends of the tile grid are covered"
    assert len(xs) < 10, "the planner must not sweep the whole globe between the two halves"


def test_cap_is_enforced_with_a_clear_error():
    with pytest.raises(TooManyTiles, match="over the cap of 10"):
        plan_tiles(box(6.0, 46.0, 6.4, 46.3), 14, cap=10)


def test_tiles_that_only_touch_the_area_are_not_planned():
    # Exactly one z1 tile: the north-west quarter of the world (its edges touch three others).
    area = box(-180, 0, 0, 85.0511)
    assert plan_tiles(area, 1, cap=10) == [Tile(1, 0, 0)]
