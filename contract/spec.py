"""Print the API's OpenAPI document as YAML: `python -m contract.spec > openapi/spec.yaml`.

openapi/spec.yaml is committed; tests/test_openapi.py fails when it and the app disagree.
"""

from __future__ import annotations

import sys

import yaml

from api.main import create_app
from constellation_core.settings import Settings


def spec() -> dict:
    return create_app(Settings()).openapi()


def render() -> str:
    return yaml.safe_dump(spec(), sort_keys=False, allow_unicode=True, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
