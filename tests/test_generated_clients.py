"""The clients generated from openapi/spec.yaml (TypeScript for web, Go for usage_go) are committed;
`make test` runs `python -m contract.drift`, which fails when any of them is stale. Here: it is
current now, and a change to the contract makes both generated clients stale."""

from __future__ import annotations

import subprocess
import sys

import yaml

from contract.drift import GO_SERVER, SPEC, TS_CLIENT, stale
from constellation_core.settings import REPO_ROOT


def test_the_committed_clients_are_current():
    done = subprocess.run([sys.executable, "-m", "contract.drift"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_contract_change_makes_both_generated_clients_stale(tmp_path):
    contract = yaml.safe_load(SPEC.read_text())
    contract["components"]["schemas"]["Usage"]["properties"]["carbon_grams"] = {"type": "number"}
    changed = tmp_path / "spec.yaml"
    changed.write_text(yaml.safe_dump(contract, sort_keys=False))
    problems = stale(changed)
    assert len(problems) == 2
    assert any(str(TS_CLIENT.relative_to(REPO_ROOT)) in p and "carbon_grams" in p for p in problems)
    assert any(str(GO_SERVER.relative_to(REPO_ROOT)) in p and "CarbonGrams" in p for p in problems)
