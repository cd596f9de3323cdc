"""Web-mercator XYZ PNG tiles of a job's imagery, rendered by rio-tiler, cached.

Each tile is read from the GeoTIFF through rio-tiler (a WarpedVRT into the tile's grid, its mask as
the PNG's alpha, so pixels outside the scene are transparent) in a worker thread: GDAL reads and
encodes with the GIL released, and a capacity limiter bounds how many render at once, so a burst of
map tiles never holds the event loop nor piles up work. Rendered tiles are kept in an LRU cache keyed
by the file's identity (path, size, mtime) and the tile; a tile outside the scene is an empty
transparent PNG without reading anything.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import anyio
import mercantile
from cachetools import LRUCache
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader

TILE_PX = 256
TILE_SIZES = (64, 256)  # 64: the model's input (constellation_core.inference.imagery.TILE_PX)
CACHE_TILES = 1024  # about 20–150 KB each
CONCURRENT_RENDERS = 4


@dataclass(frozen=True)
class Scene:
    """An imagery file as the map needs it: where it is, its bounds and the zooms worth asking for."""

    path: str
    bounds: tuple[float, float, float, float]  # west, south, east, north (degrees)
    minzoom: int
    maxzoom: int
    etag: str


class ImageryTiles:
    def __init__(self, cache_tiles: int = CACHE_TILES, concurrent: int = CONCURRENT_RENDERS) -> None:
        self._cache: LRUCache = LRUCache(maxsize=cache_tiles)
        self._scenes: dict[tuple, Scene] = {}
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(concurrent)
        self._empty: dict[int, bytes] = {}
        self.demo_path: Path | None = None  # the demo scene's file, once written (api.imagery.router)

    def scene(self, path: Path) -> Scene:
        """The file's bounds and zooms (read once per version of the file)."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            found = self._scenes.get(key)
        if found is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NoOverviewWarning: the scenes here are small
                with Reader(str(path)) as src:
                    west, south, east, north = src.get_geographic_bounds(src.tms.rasterio_geographic_crs)
                    found = Scene(str(path), (west, south, east, north), src.minzoom, src.maxzoom,
                                  hashlib.sha256(repr(key).encode()).hexdigest()[:16])
            with self._lock:
                self._scenes[key] = found
        return found

    async def tile(self, scene: Scene, z: int, x: int, y: int, size: int = TILE_PX) -> bytes:
        """The PNG of tile z/x/y (`size` px square), from the cache or rendered in a worker thread."""
        key = (scene.etag, z, x, y, size)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        if not _overlaps(scene, z, x, y):
            return await self._empty_png(size)
        png = await anyio.to_thread.run_sync(_render, scene.path, z, x, y, size, limiter=self._limiter)
        if png is None:
            png = await self._empty_png(size)
        with self._lock:
            self._cache[key] = png
        return png

    async def _empty_png(self, size: int) -> bytes:
        if size not in self._empty:
            self._empty[size] = await anyio.to_thread.run_sync(_transparent, size)
        return self._empty[size]


def _overlaps(scene: Scene, z: int, x: int, y: int) -> bool:
    tile = mercantile.bounds(x, y, z)
    west, south, east, north = scene.bounds
    return tile.west < east and tile.east > west and tile.south < north and tile.north > south


def _render(path: str, z: int, x: int, y: int, size: int) -> bytes | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Reader(path) as src:
            try:
                image = src.tile(x, y, z, tilesize=size)
            except TileOutsideBounds:
                return None
    return image.render(img_format="PNG")


def _transparent(size: int) -> bytes:
    import numpy as np
    from rio_tiler.models import ImageData

    data = np.zeros((3, size, size), dtype="uint8")
    return ImageData(np.ma.MaskedArray(data, mask=np.ones_like(data, dtype=bool))).render(img_format="PNG")
