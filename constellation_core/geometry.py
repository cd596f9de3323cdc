"""GeoJSON geometry validation for areas of interest (lon/lat, EPSG:4326)."""

from __future__ import annotations

from typing import Any

from shapely import MultiPolygon, Polygon
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

AREA_TYPES = ("Polygon", "MultiPolygon")


class InvalidGeometry(ValueError):
    pass


def parse_area(geojson: dict[str, Any]) -> Polygon | MultiPolygon:
    """A valid, non-empty Polygon or MultiPolygon within lon/lat bounds, or InvalidGeometry."""
    kind = geojson.get("type")
    if kind not in AREA_TYPES:
        raise InvalidGeometry(f"geometry type must be Polygon or MultiPolygon, not {kind!r}")
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
    if geom.area == 0:
        raise InvalidGeometry("geometry has no area")
    return geom


def to_geojson(geom: BaseGeometry) -> dict[str, Any]:
    return mapping(geom)
