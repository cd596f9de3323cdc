"""Imagery: a deterministic synthetic land-cover scene written as a real GeoTIFF, and tile reads.

Tiles are read through rasterio with a WarpedVRT into web mercator (EPSG:3857), so a tile's pixels
are exactly its XYZ footprint whatever the scene's own CRS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mercantile
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject

CLASSES = ("water", "vegetation", "urban", "bare", "cloud")
# Mean RGB per class; pixel texture is added around these.
CLASS_COLOURS = np.array(
    [[35, 70, 125], [45, 120, 50], [145, 140, 140], [175, 145, 100], [238, 238, 242]], dtype=np.float32
)
TILE_PX = 64
PARCEL_PX = 48  # land-cover parcels are blocks of about this many pixels


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    classes: np.ndarray  # (H, W) uint8 index into CLASSES


def _blocks(rng: np.random.Generator, height: int, width: int, block: int) -> np.ndarray:
    coarse = rng.random((height // block + 2, width // block + 2))
    return np.kron(coarse, np.ones((block, block)))[:height, :width]


def synthesize(height: int, width: int, seed: int, cloud_cover: float = 0.08) -> Scene:
    """Parcels of water / vegetation / urban / bare land, with clouds over a fraction of the scene."""
    rng = np.random.default_rng(seed)
    # Each land class gets a random field; the strongest field wins a parcel.
    fields = np.stack([_blocks(rng, height, width, PARCEL_PX) for _ in range(4)])
    classes = fields.argmax(axis=0).astype(np.uint8)
    clouds = _blocks(rng, height, width, PARCEL_PX * 2) > (1 - cloud_cover)
    classes[clouds] = CLASSES.index("cloud")
    texture = rng.normal(0, 14, size=(height, width, 3)).astype(np.float32)
    image = np.clip(CLASS_COLOURS[classes] + texture, 0, 255).astype(np.uint8)
    return Scene(image=image, classes=classes)


def write_scene(path: Path, bounds: tuple[float, float, float, float], *, seed: int,
                pixel_deg: float = 0.0003) -> Path:
    """Write a synthetic scene over lon/lat `bounds` as a tiled, compressed GeoTIFF (EPSG:4326)."""
    west, south, east, north = bounds
    width, height = round((east - west) / pixel_deg), round((north - south) / pixel_deg)
    scene = synthesize(height, width, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
        "crs": "EPSG:4326", "transform": from_bounds(west, south, east, north, width, height),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "photometric": "RGB",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scene.image.transpose(2, 0, 1))
    return path


class TileReader:
    """Reads XYZ tiles from a raster as (size, size, 3) uint8 arrays, reprojected into the tile's
    web-mercator grid (pixels outside the raster are 0). Use as a context manager."""

    def __init__(self, path: str | Path, size: int = TILE_PX) -> None:
        self.path = str(path)
        self.size = size

    def __enter__(self) -> TileReader:
        self._src = rasterio.open(self.path)
        return self

    def __exit__(self, *exc) -> None:
        self._src.close()

    def read(self, z: int, x: int, y: int) -> np.ndarray:
        b = mercantile.xy_bounds(x, y, z)
        tile = np.zeros((3, self.size, self.size), dtype=np.uint8)
        reproject(
            source=rasterio.band(self._src, [1, 2, 3]),
            destination=tile,
            dst_transform=from_bounds(b.left, b.bottom, b.right, b.top, self.size, self.size),
            dst_crs="EPSG:3857",
            dst_nodata=0,
            resampling=Resampling.bilinear,
        )
        return tile.transpose(1, 2, 0)


def labelled_patches(scene: Scene, count: int, seed: int, size: int = TILE_PX) -> tuple[np.ndarray, np.ndarray]:
    """Random patches of a scene, each labelled with its majority class (training data)."""
    rng = np.random.default_rng(seed)
    height, width = scene.classes.shape
    ys = rng.integers(0, height - size, count)
    xs = rng.integers(0, width - size, count)
    images = np.stack([scene.image[y:y + size, x:x + size] for y, x in zip(ys, xs)])
    labels = np.array(
        [np.bincount(scene.classes[y:y + size, x:x + size].ravel(), minlength=len(CLASSES)).argmax()
         for y, x in zip(ys, xs)],
        dtype=np.int64,
    )
    return images, labels


# The demo's scene: around Lake Geneva, where the seeded area and the tests' areas lie.
DEMO_SCENE_BOUNDS = (5.8, 45.9, 6.6, 46.5)
DEMO_SCENE_SEED = 42


def ensure_demo_scene(directory: Path) -> Path:
    """The demo scene's GeoTIFF, written once (deterministically) and reused."""
    path = directory / "demo-scene.tif"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.partial.tif")
        write_scene(partial, DEMO_SCENE_BOUNDS, seed=DEMO_SCENE_SEED)
        partial.replace(path)  # atomic: concurrent steps never read a half-written file
    return path
