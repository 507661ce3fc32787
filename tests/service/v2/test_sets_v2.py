"""Conformal prediction sets and abstention on the v2 ``-mc`` model, through Triton's own clients (HTTP and gRPC)
against a real server: the same sets and verdicts as ``/predict/uncertainty`` for the same seed, bit for bit."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import V2Server

MC = "fashion-mnist-dropout-mlp-mc"
TRANSPORTS = ("http-binary", "http-json", "grpc")


def _infer(server: V2Server, transport: str, x: np.ndarray, parameters: dict[str, Any], outputs: list[str]) -> Any:
    if transport == "grpc":
        client: Any = grpcclient.InferenceServerClient(url=server.grpc)
        inp = grpcclient.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs]
        return client.infer(MC, [inp], outputs=wanted, parameters=parameters)
    binary = transport == "http-binary"
    client = httpclient.InferenceServerClient(url=server.http)
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    return client.infer(MC, [inp], outputs=wanted, parameters=parameters)


@pytest.fixture(scope="module")
def calibration(v2_server: V2Server) -> dict[str, Any]:
    section = httpx.get(f"{v2_server.url}/info").json()["conformal"]
    assert section is not None, "the trained artifact must carry a conformal calibration"
    return section


@pytest.fixture(scope="module")
def images(test_images: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return test_images[0][:8].astype(np.float32).reshape(8, 784)


def test_metadata_lists_the_set_outputs(v2_server: V2Server) -> None:
    meta = httpx.get(f"{v2_server.url}/v2/models/{MC}").json()
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert shapes["prediction_set"] == ("BOOL", [-1, 10]) and shapes["abstain"] == ("BOOL", [-1])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sets_and_abstention_equal_rest_for_the_same_seed(
    v2_server: V2Server, images: np.ndarray, calibration: dict[str, Any], transport: str
) -> None:
    n, risk = calibration["mc_samples"], max(0.1, calibration["min_max_risk"])
    params = {"mc_samples": n, "seed": 11, "coverage": 0.9, "max_risk": risk}
    result = _infer(v2_server, transport, images, params, ["prediction_set", "abstain", "class_id"])
    body = {"images": images.tolist(), "n_samples": n, "seed": 11, "coverage": 0.9, "max_risk": risk}
    rest = httpx.post(f"{v2_server.url}/predict/uncertainty", json=body).json()
    mask = result.as_numpy("prediction_set")
    assert mask.dtype == np.bool_ and mask.shape == (8, 10)
    for row, p in zip(mask, rest["predictions"], strict=True):
        assert sorted(np.flatnonzero(row).tolist()) == sorted(p["prediction_set"])
    assert result.as_numpy("abstain").tolist() == [p["abstain"] for p in rest["predictions"]]
    response = result.get_response(as_json=True) if transport == "grpc" else result.get_response()
    got = {k: (v if not isinstance(v, dict) else next(iter(v.values()))) for k, v in response["parameters"].items()}
    assert got["conformal_method"] == calibration["method"] and float(got["coverage"]) == 0.9


def test_set_outputs_are_bit_identical_through_every_protocol(
    v2_server: V2Server, images: np.ndarray, calibration: dict[str, Any]
) -> None:
    params = {"mc_samples": calibration["mc_samples"], "seed": 5, "coverage": 0.95, "max_risk": 0.5}
    answers = [_infer(v2_server, t, images, params, ["prediction_set", "abstain"]) for t in TRANSPORTS]
    for name in ("prediction_set", "abstain"):
        assert len({a.as_numpy(name).tobytes() for a in answers}) == 1, name


def test_default_outputs_leave_the_set_outputs_out_unless_asked(
    v2_server: V2Server, images: np.ndarray, calibration: dict[str, Any]
) -> None:
    x = images[:1].tolist()
    infer = {"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": x}]}
    url = f"{v2_server.url}/v2/models/{MC}/infer"
    plain = httpx.post(url, json={**infer, "parameters": {"mc_samples": calibration["mc_samples"]}}).json()
    assert "prediction_set" not in [o["name"] for o in plain["outputs"]]
    asked = {"mc_samples": calibration["mc_samples"], "coverage": 0.9}
    names = [o["name"] for o in httpx.post(url, json={**infer, "parameters": asked}).json()["outputs"]]
    assert "prediction_set" in names and "abstain" not in names


BAD = [
    ({"coverage": 1.5}, "parameter 'coverage'"),
    ({"coverage": 0.2}, "parameter 'coverage'"),
    ({"coverage": "0.9"}, "parameter 'coverage'"),
    ({"coverage": True}, "parameter 'coverage'"),
    ({"max_risk": 1e-9}, "parameter 'max_risk'"),
    ({"max_risk": 1.0}, "parameter 'max_risk'"),
]


@pytest.mark.parametrize("transport", ["http-json", "grpc"])
@pytest.mark.parametrize(("extra", "culprit"), BAD)
def test_bad_set_parameters_are_refused_naming_them(
    v2_server: V2Server, images: np.ndarray, calibration: dict[str, Any], transport: str, extra: dict[str, Any],
    culprit: str,
) -> None:  # fmt: skip
    params = {"mc_samples": calibration["mc_samples"], **extra}
    with pytest.raises(InferenceServerException) as info:
        _infer(v2_server, transport, images[:1], params, ["class_id"])
    assert culprit in str(info.value)
    status = str(info.value.status())
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), status


@pytest.mark.parametrize("transport", ["http-json", "grpc"])
def test_a_set_output_without_its_parameter_is_refused(
    v2_server: V2Server, images: np.ndarray, calibration: dict[str, Any], transport: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        _infer(v2_server, transport, images[:1], {"mc_samples": calibration["mc_samples"]}, ["prediction_set"])
    assert "output 'prediction_set'" in str(info.value) and "coverage" in str(info.value)
