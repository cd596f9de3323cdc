"""Imagery tiles (api/imagery): the pictures the model read, served as XYZ PNGs with the job's access rules."""

from __future__ import annotations

import mercantile
import numpy as np
from rasterio.io import MemoryFile
from sqlalchemy import update

from constellation_core.inference.imagery import DEMO_SCENE_BOUNDS
from constellation_core.tables import jobs
from tests.samples import job_body

PROBLEM = "application/problem+json"
INSIDE = mercantile.tile(6.14, 46.2, 14)  # Geneva, inside the demo scene
OUTSIDE = mercantile.tile(-70.0, 10.0, 14)


def _pixels(png: bytes) -> np.ndarray:
    """(bands, height, width) of a PNG: RGB plus alpha."""
    with MemoryFile(png, ext=".png") as memory, memory.open() as image:
        return image.read()


def test_a_member_gets_their_jobs_imagery_as_map_tiles_and_model_sized_chips(client, make_account):
    account = make_account()
    job_id = client.post("/jobs", json=job_body(), headers=account.headers).json()["id"]
    tilejson = client.get(f"/jobs/{job_id}/imagery/tilejson.json", headers=account.headers)
    assert tilejson.status_code == 200, tilejson.text
    assert tilejson.json()["bounds"] == list(DEMO_SCENE_BOUNDS)
    assert tilejson.json()["tiles"] == [f"/jobs/{job_id}/imagery/{{z}}/{{x}}/{{y}}.png"]

    tile = client.get(f"/jobs/{job_id}/imagery/14/{INSIDE.x}/{INSIDE.y}.png", headers=account.headers)
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    bands = _pixels(tile.content)
    assert bands.shape == (4, 256, 256)
    assert (bands[3] == 255).all(), "inside the scene every pixel is opaque"
    assert bands[:3].std() > 5, "the scene's texture, not a flat fill"
    chip = _pixels(client.get(f"/jobs/{job_id}/imagery/14/{INSIDE.x}/{INSIDE.y}.png", params={"size": 64},
                              headers=account.headers).content)
    assert chip.shape == (4, 64, 64)
    again = client.get(f"/jobs/{job_id}/imagery/14/{INSIDE.x}/{INSIDE.y}.png",
                       headers={**account.headers, "If-None-Match": tile.headers["etag"]})
    assert again.status_code == 304 and not again.content

    outside = client.get(f"/jobs/{job_id}/imagery/14/{OUTSIDE.x}/{OUTSIDE.y}.png", headers=account.headers)
    assert outside.status_code == 200 and (_pixels(outside.content)[3] == 0).all(), "outside: transparent"
    demo = client.get(f"/imagery/14/{INSIDE.x}/{INSIDE.y}.png", headers=account.headers)
    assert demo.status_code == 200 and demo.content == tile.content, "the job ran on the demo scene"


def test_another_members_job_imagery_is_not_found_and_bad_tiles_are_refused(client, make_account, engine):
    owner, stranger = make_account(), make_account()
    job_id = client.post("/jobs", json=job_body(), headers=owner.headers).json()["id"]
    path = f"/jobs/{job_id}/imagery/14/{INSIDE.x}/{INSIDE.y}.png"
    for url in (path, f"/jobs/{job_id}/imagery/tilejson.json"):
        refused = client.get(url, headers=stranger.headers)
        assert refused.status_code == 404 and refused.headers["content-type"] == PROBLEM, url
    assert client.get(path).status_code == 401
    assert client.get("/imagery/tilejson.json").status_code == 401
    for bad in ("/jobs/{id}/imagery/25/0/0.png", "/jobs/{id}/imagery/3/8/0.png", "/jobs/{id}/imagery/3/0/-1.png",
                "/jobs/{id}/imagery/3/0/0.png?size=100"):
        refused = client.get(bad.format(id=job_id), headers=owner.headers)
        assert refused.status_code == 422 and refused.headers["content-type"] == PROBLEM, (bad, refused.text)
    with engine.begin() as conn:  # a job whose own imagery is gone from this machine
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(params={"imagery": "/nonexistent/scene.tif"}))
    gone = client.get(path, headers=owner.headers)
    assert gone.status_code == 404 and "no longer on this machine" in gone.json()["detail"]


def test_a_batch_of_tiles_read_at_once_is_each_tile_as_read_alone(tmp_path):
    """The device workers read a batch's tiles a block at a time: every pixel must be what a tile read
    alone gives — a compact batch, a thin diagonal, tiles across the scene's edge and outside it, two
    zooms in one batch, and a tile asked for twice."""
    from constellation_core.inference.imagery import TileReader, write_scene
    from constellation_core.tiles import Tile

    scene = write_scene(tmp_path / "scene.tif", (6.10, 46.15, 6.20, 46.22), seed=7)
    corner = mercantile.tile(6.1, 46.22, 16)
    compact = [Tile(16, corner.x + dx, corner.y + dy) for dx in range(-1, 4) for dy in range(-1, 5)]
    diagonal = [Tile(17, 2 * corner.x + 4 + i, 2 * corner.y + 4 + i) for i in range(12)]
    outside = [Tile(16, corner.x - 6, corner.y - 6)]
    tiles = [*compact, *diagonal, *outside, compact[7]]
    with TileReader(scene) as reader:
        alone = np.stack([reader.read(t.z, t.x, t.y) for t in tiles])
        together = reader.read_many(tiles)
    assert together.shape == alone.shape == (len(tiles), 64, 64, 3)
    differing = [tiles[i] for i in range(len(tiles)) if not np.array_equal(together[i], alone[i])]
    assert differing == [], f"tiles whose pixels differ when read in a batch: {differing}"
    assert alone[len(compact) + len(diagonal)].max() == 0, "a tile outside the scene is nodata"
    assert alone[:len(compact)].std() > 5 and (alone[:len(compact)] == 0).any(), "the scene's edge crosses the block"
