"""The README's layout table is the tree: every path it names exists, and every top-level folder of
the repository is in it."""

from __future__ import annotations

import re
import subprocess

from constellation_core.settings import REPO_ROOT


def _layout_paths() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", table, re.MULTILINE)]


def test_every_path_in_the_layout_table_exists():
    paths = _layout_paths()
    assert paths, "no layout table found"
    assert [p for p in paths if not (REPO_ROOT / p).exists()] == []


def test_every_top_level_folder_is_in_the_layout_table():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/", 1)[0] for line in tracked.splitlines() if "/" in line and not line.startswith(".")}
    listed = {p.rstrip("/").split("/", 1)[0] for p in _layout_paths()}
    assert sorted(folders - listed) == []
