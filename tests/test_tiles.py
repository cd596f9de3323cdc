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


def _star(rnd, cx: float, cy: float, radius: float) -> Polygon:
    corners = rnd.randint(3, 12)
    return Polygon([(cx + radius * rnd.uniform(0.2, 1) * math.cos(2 * math.pi * i / corners),
                     cy + radius * rnd.uniform(0.2, 1) * math.sin(2 * math.pi * i / corners))
                    for i in range(corners)])


def test_random_areas_are_planned_exactly_like_the_brute_force():
    import random

    rnd = random.Random(20261202)
    checked = 0
    while checked < 40:
        area = _star(rnd, rnd.uniform(-170, 170), rnd.uniform(-70, 70), rnd.uniform(0.05, 3))
        if not area.is_valid:
            continue
        zoom = rnd.randint(4, 9)
        assert plan_tiles(area, zoom, cap=100_000) == _brute_force(area, zoom), (area.wkt, zoom)
        checked += 1


def _thin_diagonal_sliver() -> Polygon:
    return Polygon([(6.0, 46.0), (6.3, 46.3), (6.3001, 46.3), (6.0001, 46.0), (6.0, 46.0)])


def test_a_thin_diagonal_sliver_costs_its_own_tiles_not_its_bounding_box(monkeypatch):
    import shapely

    from constellation_core import tiles

    clips = []
    real_clip = shapely.clip_by_rect
    monkeypatch.setattr(tiles.shapely, "clip_by_rect", lambda *a: clips.append(a) or real_clip(*a))
    sliver = _thin_diagonal_sliver()
    planned = plan_tiles(sliver, 15, cap=5000)
    assert planned == _brute_force(sliver, 15)
    # Its bounding box holds about 28 × 40 tiles at z15; the sliver crosses about 70 of them.
    assert len(planned) < 100
    assert len(clips) <= 8 * len(planned), f"{len(clips)} clips for {len(planned)} tiles"


def test_an_area_over_the_cap_is_refused_before_any_tile_is_searched(monkeypatch):

    from constellation_core import tiles

    monkeypatch.setattr(tiles.shapely, "clip_by_rect", lambda *a: pytest.fail("searched tiles"))
    # One degree of sliver at zoom 20 spans ~4,000 rows; a big square needs millions of tiles.
    tall_sliver = Polygon([(6.0, 46.0), (6.0001, 47.0), (6.0002, 47.0), (6.0001, 46.0), (6.0, 46.0)])
    with pytest.raises(TooManyTiles, match="over the cap of 2000"):
        plan_tiles(tall_sliver, 20, cap=2000)
    with pytest.raises(TooManyTiles, match="over the cap of 5000"):
        plan_tiles(box(5.0, 45.0, 7.0, 47.0), 16, cap=5000)


def test_an_outline_too_costly_to_plan_is_refused_with_a_reason(monkeypatch):
    from constellation_core import tiles

    monkeypatch.setattr(tiles, "NODES_PER_CAPPED_TILE", 1)
    with pytest.raises(tiles.TooComplex, match="simplify it"):
        plan_tiles(_thin_diagonal_sliver(), 15, cap=50)


def test_the_bound_checked_before_planning_never_exceeds_the_tiles_an_area_needs():
    """Continent-sized triangles (edges straight in lon/lat, curved in mercator): the early refusal
    must never turn away an area the cap would fit."""
    import random

    from constellation_core.tiles import at_least_tiles

    rnd = random.Random(7)
    checked = 0
    while checked < 30:
        area = Polygon([(rnd.uniform(-179, 179), rnd.uniform(-84, 84)) for _ in range(3)])
        if not area.is_valid or area.area < 1:
            continue
        zoom = rnd.randint(2, 6)
        assert at_least_tiles(area, zoom) <= len(plan_tiles(area, zoom, cap=10**6)), (area.wkt, zoom)
        checked += 1
