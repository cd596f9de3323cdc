"""Fail when anything generated from the contract is stale: `python -m contract.drift`.

openapi/spec.yaml must equal what the API serves; web/src/api/schema.d.ts (openapi-typescript) and
usage_go/internal/api/api.gen.go (oapi-codegen) must equal what their generators make from it now.
`make generate` brings them all up to date.
"""

from __future__ import annotations

import difflib
import subprocess
import sys
import tempfile
from pathlib import Path

from constellation_core.settings import REPO_ROOT

SPEC = REPO_ROOT / "openapi" / "spec.yaml"
TS_CLIENT = REPO_ROOT / "web" / "src" / "api" / "schema.d.ts"
GO_SERVER = REPO_ROOT / "usage_go" / "internal" / "api" / "api.gen.go"


def generate_typescript(spec: Path, out: Path) -> str:
    # Same flags as `npm run gen:api` (web/package.json): request fields with defaults stay optional.
    subprocess.run([str(REPO_ROOT / "web" / "node_modules" / ".bin" / "openapi-typescript"), str(spec),
                    "--default-non-nullable", "false", "--output", str(out)], check=True, capture_output=True,
                   cwd=REPO_ROOT / "web")
    return out.read_text()


def generate_go(spec: Path) -> str:
    done = subprocess.run(["go", "tool", "oapi-codegen", "-config", "internal/api/oapi-codegen.yaml", str(spec)],
                          check=True, capture_output=True, text=True, cwd=REPO_ROOT / "usage_go")
    return done.stdout


def stale(spec: Path) -> list[str]:
    """What is out of date with respect to `spec` (and the API, for the committed spec)."""
    from contract.spec import render

    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        expected = {
            TS_CLIENT: generate_typescript(spec, Path(tmp) / "schema.d.ts"),
            GO_SERVER: generate_go(spec),
        }
    if spec == SPEC:
        expected[SPEC] = render()
    for path, text in expected.items():
        committed = path.read_text() if path.exists() else ""
        if committed != text:
            diff = difflib.unified_diff(committed.splitlines(), text.splitlines(), str(path.relative_to(REPO_ROOT)),
                                        "generated now", lineterm="", n=1)
            problems.append("\n".join(list(diff)[:20]))
    return problems


def main() -> None:
    problems = stale(SPEC)
    if problems:
        print("Generated files are stale; run `make generate` and commit:\n", file=sys.stderr)
        print("\n\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("openapi/spec.yaml, web/src/api/schema.d.ts and usage_go/internal/api/api.gen.go are current")


if __name__ == "__main__":
    main()
