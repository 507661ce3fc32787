"""Every bad request of the catalogue gets the same status and body with the /predict fast path on and off.

The fast path only answers well-formed requests and hands everything else to FastAPI with the body
replayed, so errors must not depend on it; this runs the whole catalogue through both, in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from catalogue import Case
from fastapi.testclient import TestClient
from hardening_support import LIMITS
from test_bad_inputs import _catalogue

from service import Settings, create_app


@pytest.fixture(scope="module")
def pair(trained_artifact: Path) -> Iterator[tuple[TestClient, TestClient]]:
    def app(fast: bool) -> TestClient:
        return TestClient(create_app(Settings(model_dir=trained_artifact, device="cpu", fast_path=fast, **LIMITS)))

    with app(True) as fast, app(False) as slow:
        yield fast, slow


@pytest.mark.parametrize("case", _catalogue(), ids=str)
def test_catalogue_case_is_answered_identically_with_and_without_the_fast_path(
    case: Case, pair: tuple[TestClient, TestClient]
) -> None:
    fast, slow = pair
    headers = {"content-type": case.content_type}
    a = fast.post(case.path, content=case.body, headers=headers)
    b = slow.post(case.path, content=case.body, headers=headers)
    assert (a.status_code, a.json()) == (b.status_code, b.json())
    assert a.status_code == case.status
