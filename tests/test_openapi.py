"""openapi/spec.yaml is the contract: it must match what the API serves, in both directions."""

from __future__ import annotations

import yaml

from contract.spec import spec
from constellation_core.settings import REPO_ROOT

SPEC = REPO_ROOT / "openapi" / "spec.yaml"


def test_committed_spec_matches_the_app():
    committed = yaml.safe_load(SPEC.read_text())
    served = spec()
    missing = sorted(set(served["paths"]) - set(committed["paths"]))
    extra = sorted(set(committed["paths"]) - set(served["paths"]))
    assert not missing and not extra, f"paths only in the app: {missing}; only in the spec: {extra} (make openapi)"
    assert committed == served, "openapi/spec.yaml is stale: run `make openapi` and commit it"


def test_operation_ids_are_tag_and_name():
    for path, operations in spec()["paths"].items():
        for method, operation in operations.items():
            tag = operation["tags"][0]
            assert operation["operationId"].startswith(f"{tag}-"), (method, path, operation["operationId"])
