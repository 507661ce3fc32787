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


OPEN = {"GET /livez", "GET /readyz"}


def test_schemathesis_with_a_valid_key_finds_nothing(keyed: tuple[Server, str]) -> None:
    server, token = keyed
    out = fuzz(server.url, {"positive": 40, "negative": 80}, headers={"Authorization": f"Bearer {token}"})
    seen = dict(sorted(out.statuses.items()))
    print(f"\nschemathesis with a key: {sum(out.cases.values())} cases, statuses {seen}")
    assert not out.failures, "\n".join(out.failures[:10])
    assert 401 not in out.statuses and 403 not in out.statuses
    assert 200 in out.statuses and 422 in out.statuses


def test_schemathesis_without_a_key_every_protected_operation_is_a_401(keyed: tuple[Server, str]) -> None:
    server, token = keyed
    key = {"Authorization": f"Bearer {token}"}
    out = fuzz(server.url, {"positive": 10, "negative": 10}, slices_per_mode=1, schema_headers=key)
    print(
        f"\nschemathesis without a key: {sum(out.cases.values())} cases, statuses {dict(sorted(out.statuses.items()))}"
    )
    assert not out.failures, "\n".join(out.failures[:10])  # 401 is declared for every protected operation
    assert {label for label, _ in out.cases} == OPERATIONS
    assert set(out.statuses) == {200, 401}  # 200: the two health operations only (below)
    by_label = _statuses_by_operation(server.url)
    for label in OPERATIONS - OPEN:
        assert by_label[label] == {401}, (label, by_label[label])
    for label in OPEN:
        assert by_label[label] == {200}, (label, by_label[label])


def _statuses_by_operation(url: str) -> dict[str, set[int]]:
    """One plain request per operation, without a key (what schemathesis saw, asked directly)."""
    found: dict[str, set[int]] = {}
    for label in OPERATIONS:
        method, path = label.split(" ", 1)
        body = {"images": [[0] * 784]} if method == "POST" else None
        found[label] = {httpx.request(method, url + path, json=body, timeout=10).status_code}
    return found
