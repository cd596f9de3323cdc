"""The API contract's tooling: `openapi/spec.yaml` from the API, and the check that it and the
clients generated from it (TypeScript, Go) are current."""
