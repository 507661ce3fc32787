"""X-Request-ID: accepted or generated, echoed on every HTTP answer (fast path, errors, auth refusals, v2), in logs."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.requestid import JsonFormatter, RequestIdFilter, TextFormatter, request_id, valid

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def keyed(
    trained_artifact: Path, make_settings: Callable[..., Settings], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    keys = tmp_path_factory.mktemp("keys") / "keys.toml"
    digest = hashlib.sha256(b"t-infer").hexdigest()
    keys.write_text(f'[[keys]]\nid = "app"\nsha256 = "{digest}"\nscopes = ["infer"]\n')
    with TestClient(create_app(make_settings(trained_artifact, api_keys_file=keys))) as c:
        yield c


@pytest.fixture(scope="module")
def image(test_images: tuple[np.ndarray, np.ndarray]) -> list[int]:
    return [int(v) for v in test_images[0][0].reshape(-1)]


def test_a_valid_client_id_is_echoed(client: TestClient, image: list[int]) -> None:
    for method, path, body in (("GET", "/info", None), ("POST", "/predict", {"images": [image]})):
        resp = client.request(method, path, json=body, headers={"X-Request-ID": "trace-42 abc/def"})
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == "trace-42 abc/def"
        assert len(resp.headers.get_list("x-request-id")) == 1


def test_an_id_is_generated_when_absent_or_invalid(client: TestClient, image: list[int]) -> None:
    ids = []
    for headers in ({}, {"X-Request-ID": "x" * 129}, {"X-Request-ID": ""}, {"X-Request-ID": "tab\there"}):
        resp = client.post("/predict", json={"images": [image]}, headers=headers)
        assert resp.status_code == 200
        assert HEX_ID.match(resp.headers["x-request-id"]), resp.headers
        ids.append(resp.headers["x-request-id"])
    assert len(set(ids)) == len(ids)
    assert client.get("/livez", headers={"X-Request-ID": "y" * 128}).headers["x-request-id"] == "y" * 128


@pytest.mark.parametrize("fast_path", [True, False])
def test_predict_echoes_with_and_without_the_fast_path(
    trained_artifact: Path, make_settings: Callable[..., Settings], image: list[int], fast_path: bool
) -> None:
    with TestClient(create_app(make_settings(trained_artifact, fast_path=fast_path))) as c:
        for path, body in (("/predict", {"images": [image]}), ("/predict/uncertainty", {"images": [image], "seed": 1})):
            resp = c.post(path, json=body, headers={"X-Request-ID": f"fp-{fast_path}"})
            assert resp.status_code == 200 and resp.headers["x-request-id"] == f"fp-{fast_path}"


def test_error_answers_carry_the_id(client: TestClient) -> None:
    cases = [
        ("GET", "/nope", None, 404),
        ("POST", "/predict", {"images": [[0] * 783]}, 422),
        ("POST", "/predict", {"images": []}, 422),
        ("GET", "/v2/models/nope", None, 404),
    ]
    for method, path, body, status in cases:
        resp = client.request(method, path, json=body, headers={"X-Request-ID": f"err-{status}"})
        assert resp.status_code == status, (path, resp.text)
        assert resp.headers["x-request-id"] == f"err-{status}", path
    resp = client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code in (400, 422) and HEX_ID.match(resp.headers["x-request-id"])


def test_v2_answers_carry_the_id(client: TestClient) -> None:
    for path in ("/v2", "/v2/health/ready"):
        resp = client.get(path, headers={"X-Request-ID": "v2-id"})
        assert resp.status_code == 200 and resp.headers["x-request-id"] == "v2-id"


def test_auth_refusals_carry_the_id(keyed: TestClient, image: list[int]) -> None:
    resp = keyed.post("/predict", json={"images": [image]}, headers={"X-Request-ID": "no-key"})
    assert resp.status_code == 401 and resp.headers["x-request-id"] == "no-key"
    resp = keyed.get("/metrics", headers={"Authorization": "Bearer t-infer", "X-Request-ID": "wrong-scope"})
    assert resp.status_code == 403 and resp.headers["x-request-id"] == "wrong-scope"
    resp = keyed.post("/predict", json={"images": [image]}, headers={"Authorization": "Bearer t-infer"})
    assert resp.status_code == 200 and HEX_ID.match(resp.headers["x-request-id"])


def test_validation_of_ids() -> None:
    assert valid(b"a") and valid(b"~" * 128) and valid(b"with space")
    assert not valid(b"") and not valid(b"a" * 129) and not valid(b"\x7f") and not valid("é".encode())


def _record(message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("service", logging.WARNING, __file__, 1, message, (), exc_info)


def test_json_log_lines_parse_and_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("test.requestid.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside a request: %s", 'quote " and newline \n')
        token = request_id.set("rid-7")
        try:
            logger.warning("inside")
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed")
        finally:
            request_id.reset(token)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    docs = [json.loads(line) for line in lines]
    for doc in docs:
        assert {"time", "level", "logger", "message", "request_id"} <= set(doc)
        assert doc["logger"] == "test.requestid.json" and doc["level"] in ("warning", "error")
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", doc["time"])
    assert docs[0]["request_id"] is None and docs[0]["message"] == 'outside a request: quote " and newline \n'
    assert docs[1]["request_id"] == "rid-7" and docs[1]["message"] == "inside"
    assert docs[2]["request_id"] == "rid-7" and "ValueError: boom" in docs[2]["exc_info"]


def test_text_log_lines_append_the_request_id() -> None:
    record = _record("hello")
    RequestIdFilter().filter(record)
    assert TextFormatter().format(record).endswith("WARNING service: hello")
    token = request_id.set("abc")
    try:
        record = _record("hello")
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    assert TextFormatter().format(record).endswith("WARNING service: hello request_id=abc")


def test_log_format_setting() -> None:
    assert Settings(log_format="JSON").log_format == "json"
    assert Settings().log_format == "text"
    with pytest.raises(ValueError):
        Settings(log_format="xml")
