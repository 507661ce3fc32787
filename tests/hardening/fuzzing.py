"""Schemathesis runs, one ``(operation, generation mode, seed)`` slice at a time, in worker processes.

Generating a body means drawing 784-value images with Hypothesis, which is CPU-bound, so
the slices run in a 2-process pool. Each slice is reproducible: a fixed Hypothesis seed,
no example database. Failures are collected, not raised, so nothing is shrunk and a run
stays bounded in time.
"""

from __future__ import annotations

import collections
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, cast

import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Slice:
    label: str  # "POST /predict"
    mode: str  # "positive" | "negative"
    examples: int
    seed: int


@dataclass
class Outcome:
    cases: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)

    def merge(self, other: Outcome) -> None:
        self.cases.update(other.cases)
        self.statuses.update(other.statuses)
        self.failures.extend(other.failures)


def operations(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Every operation of the service's live OpenAPI document, by label (fetched with ``headers``)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers or {})
    ops = [cast(Any, result).ok() for result in schema.get_all_operations()]  # an invalid operation raises
    return {op.label: op for op in ops}


def takes_input(op: Any) -> bool:
    return bool(op.body or op.query or op.path_parameters or op.headers)


def run_slice(
    url: str, part: Slice, headers: dict[str, str] | None = None, schema_headers: dict[str, str] | None = None
) -> Outcome:
    """Generate ``part.examples`` requests for one operation and check every response."""
    op = operations(url, schema_headers)[part.label]
    mode = GenerationMode(part.mode)
    out = Outcome()

    @seed(part.seed)
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=part.examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(base_url=url, timeout=30, headers=headers)
        out.cases[(part.label, part.mode)] += 1
        out.statuses[response.status_code] += 1
        failure = f"{part.label} [{part.mode}, seed {part.seed}] -> {response.status_code}: "
        # schemathesis' negative_data_rejection, with 413 counted as the rejection it is
        if mode is GenerationMode.NEGATIVE and not 400 <= response.status_code < 500:
            out.failures.append(failure + "schema-violating request was not rejected with a 4xx")
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:
            out.failures.append(failure + str(exc)[:500])

    check()
    return out


def fuzz(
    url: str,
    budget: dict[str, int],
    slices_per_mode: int = 4,
    workers: int = 2,
    headers: dict[str, str] | None = None,
    schema_headers: dict[str, str] | None = None,
) -> Outcome:
    """Every operation: ``budget[mode]`` cases per mode for operations with inputs, 1 for those without; every
    request carries ``headers`` (e.g. an API key); the schema is fetched with ``schema_headers`` (default:
    ``headers``)."""
    schema_headers = headers if schema_headers is None else schema_headers
    parts: list[Slice] = []
    for label, op in sorted(operations(url, schema_headers).items()):
        if not takes_input(op):
            parts.append(Slice(label, "positive", 1, 0))  # an operation without inputs has one possible request
            continue
        for mode, total in budget.items():
            for k in range(slices_per_mode):
                share = total // slices_per_mode + (1 if k < total % slices_per_mode else 0)
                parts.append(Slice(label, mode, share, k))
    out = Outcome()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        n = len(parts)
        for result in pool.map(run_slice, [url] * n, parts, [headers] * n, [schema_headers] * n):
            out.merge(result)
    return out
