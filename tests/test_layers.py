"""The package layers hold: `constellation_core` is only what the API and Dagster share (no Dagster,
no web framework, no tooling), the API does not import Dagster, the CLI is an HTTP client. The
rules are import-linter contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from constellation_core.settings import REPO_ROOT


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
