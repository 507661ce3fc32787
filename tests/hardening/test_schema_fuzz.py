"""Schema fuzzing: schemathesis drives every operation of the running service's OpenAPI.

At least 1,000 generated requests in total (schema-valid and schema-violating bodies),
seeded so the run is reproducible and bounded in time. Every response must pass
schemathesis' conformance checks: no 5xx, a status code the schema declares, the declared
content type and headers, a body that validates against the declared response schema,
and (for schema-violating input) a 4xx rejection.
"""

from __future__ import annotations

import httpx
from fuzzing import fuzz, operations
from hardening_support import Server

OPERATIONS = {
    "POST /predict",
    "POST /predict/uncertainty",
    "GET /livez",
    "GET /readyz",
    "GET /info",
    "GET /metrics",
}
BUDGET = {"positive": 150, "negative": 350}  # per operation that takes a body
MIN_TOTAL = 1000


def test_openapi_lists_every_operation(hardened: Server) -> None:
    assert set(operations(hardened.url)) == OPERATIONS


def test_schemathesis_every_operation_no_server_error_no_schema_violation(hardened: Server) -> None:
    out = fuzz(hardened.url, BUDGET)
    total = sum(out.cases.values())
    print(f"\nschemathesis: {total} cases, statuses {dict(sorted(out.statuses.items()))}")
    for (label, mode), n in sorted(out.cases.items()):
        print(f"  {label} [{mode}]: {n}")
    assert not out.failures, "\n".join(out.failures[:10])
    assert not [status for status in out.statuses if status >= 500]
    assert {label for label, _ in out.cases} == OPERATIONS
    assert total >= MIN_TOTAL
    assert 200 in out.statuses and 422 in out.statuses  # both accepted and rejected requests were exercised
    assert httpx.get(f"{hardened.url}/readyz", timeout=5).status_code == 200
