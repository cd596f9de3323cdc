"""Areas of interest from GeoJSON (lon/lat, EPSG:4326): the one place that reads what a user gives.

`area_from_geojson` takes what a GeoJSON file holds — a Polygon or MultiPolygon geometry, a Feature
of one, or a FeatureCollection of them — and returns one valid Polygon or MultiPolygon. The rule for
several features: the area is the union of all their polygons (overlaps merged, each polygon kept;
every feature must be a Polygon or MultiPolygon). `POST /jobs`, `POST /jobs/estimate` and
`POST /areas` apply it; the CLI and the dashboard send a file's content as it is and show what the
API made of it (`POST /jobs/estimate` answers the area it will plan)."""

from __future__ import annotations

import math
from typing import Any

from shapely import MultiPolygon, Polygon, count_coordinates, unary_union
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

AREA_TYPES = ("Polygon", "MultiPolygon")
WGS84_NAMES = ("EPSG:4326", "urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:OGC::CRS84",
               "urn:ogc:def:crs:EPSG::4326", "CRS84")
# An area is a few countries at most: bigger ones are refused before any tile is planned.
MAX_AREA_VERTICES = 100_000
# A FeatureCollection's polygons are merged into one area: beyond this many it is a data set, not an area.
MAX_FEATURES = 1_000


class InvalidGeometry(ValueError):
    pass


# A FeatureCollection of MultiPolygons nests 7 levels deep (collection → features → feature → geometry
# → polygons → rings → positions); anything deeper is not GeoJSON.
MAX_NESTING = 12


def check_nesting(value: Any, limit: int = MAX_NESTING) -> None:
    """InvalidGeometry when `value` nests dicts and lists deeper than `limit` (walked without recursion,
    so a hostile depth costs a loop, not the stack)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise InvalidGeometry(f"the GeoJSON nests deeper than {limit} levels; no area does")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


# Below this an area is a line or a point in disguise (1e-10 square degrees is about 1 m²).
MIN_AREA_DEG2 = 1e-10


def parse_area(geojson: dict[str, Any]) -> Polygon | MultiPolygon:
    """A valid, non-empty Polygon or MultiPolygon within lon/lat bounds, or InvalidGeometry."""
    kind = geojson.get("type")
    if kind not in AREA_TYPES:
        raise InvalidGeometry(f"geometry type must be Polygon or MultiPolygon, not {kind!r}")
    polygons = geojson.get("coordinates")
    _check_coordinates(kind, [polygons] if kind == "Polygon" else polygons)
    try:
        geom = shape(geojson)
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise InvalidGeometry(f"malformed {kind} coordinates: {exc}") from exc
    if geom.is_empty:
        raise InvalidGeometry("geometry is empty")
    west, south, east, north = geom.bounds
    if west < -180 or east > 180 or south < -85.0511 or north > 85.0511:
        raise InvalidGeometry(
            "coordinates must be lon/lat (EPSG:4326) within [-180, 180] × [-85.0511, 85.0511] "
            "(the web-mercator range); split areas that cross the antimeridian into a MultiPolygon"
        )
    if not geom.is_valid:
        raise InvalidGeometry(f"geometry is not valid: {explain_validity(geom)}")
    if geom.area < MIN_AREA_DEG2:
        raise InvalidGeometry("geometry has no area (its points lie on a line, or it is smaller than a square metre)")
    return geom


def _check_coordinates(kind: str, polygons: Any) -> None:
    """The GeoJSON shape of a (Multi)Polygon's coordinates, checked level by level without recursion
    (any nesting depth is refused at once): polygons of rings of [lon, lat] positions, finite numbers,
    each ring closed with at least four positions (RFC 7946 §3.1.6)."""
    shape_hint = f"{kind} coordinates must be {'a list of polygons, each ' if kind == 'MultiPolygon' else ''}" \
                 "a list of rings, each a list of [lon, lat] positions"
    if not isinstance(polygons, list) or not polygons:
        raise InvalidGeometry(shape_hint)
    for rings in polygons:
        if not isinstance(rings, list) or not rings:
            raise InvalidGeometry(shape_hint)
        for ring in rings:
            if not isinstance(ring, list):
                raise InvalidGeometry(shape_hint)
            for position in ring:
                if (not isinstance(position, list) or len(position) not in (2, 3)
                        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)):
                    raise InvalidGeometry(f"{shape_hint}; a position is [lon, lat] numbers, not {str(position)[:40]}")
                if not all(math.isfinite(v) for v in position):
                    raise InvalidGeometry("coordinates must be finite numbers (no NaN or Infinity)")
            if len(ring) < 4:
                raise InvalidGeometry("a ring needs at least four positions (a triangle, closed)")
            if ring[0] != ring[-1]:
                raise InvalidGeometry("a ring must be closed: its last position must repeat its first")


def area_from_geojson(geojson: Any, *, max_deg2: float | None = None) -> Polygon | MultiPolygon:
    """The one Polygon/MultiPolygon of a GeoJSON object (see the module's rule), checked for CRS,
    type, validity and size (vertices; square degrees when `max_deg2` is given), or InvalidGeometry."""
    if not isinstance(geojson, dict):
        raise InvalidGeometry("the area must be a GeoJSON object")
    check_nesting(geojson)  # before anything walks it recursively
    crs = geojson.get("crs")
    if crs is not None:
        properties = crs.get("properties") if isinstance(crs, dict) else None
        name = properties.get("name") if isinstance(properties, dict) else None
        if name not in WGS84_NAMES:
            raise InvalidGeometry(f"unsupported CRS {name!r}: coordinates must be lon/lat (EPSG:4326 / CRS84)")
    kind = geojson.get("type")
    if kind == "Feature":
        geometries = [geojson.get("geometry")]
    elif kind == "FeatureCollection":
        features = geojson.get("features")
        if not isinstance(features, list) or not features:
            raise InvalidGeometry("a FeatureCollection needs at least one feature")
        if len(features) > MAX_FEATURES:
            raise InvalidGeometry(f"a FeatureCollection may hold at most {MAX_FEATURES} features, not "
                                  f"{len(features)}; dissolve them into fewer polygons")
        geometries = [f.get("geometry") if isinstance(f, dict) else None for f in features]
    else:
        geometries = [geojson]
    parts = []
    for geometry in geometries:
        if not isinstance(geometry, dict):
            raise InvalidGeometry("every feature needs a geometry")
        parts.append(parse_area(geometry))
    merged = parts[0] if len(parts) == 1 else unary_union(parts)
    if count_coordinates(merged) > MAX_AREA_VERTICES:
        raise InvalidGeometry(f"the area has more than {MAX_AREA_VERTICES} vertices; simplify it")
    if max_deg2 is not None and merged.area > max_deg2:
        raise InvalidGeometry(f"the area is larger than {max_deg2:.0f} square degrees; split it into smaller areas")
    return merged


def to_geojson(geom: BaseGeometry) -> dict[str, Any]:
    return mapping(geom)
