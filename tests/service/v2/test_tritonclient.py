"""The current tritonclient from PyPI, unmodified, against a real mcserve (uvicorn + gRPC): every call a Triton user
makes, on both models, over HTTP with binary tensors on (tritonclient's default) and off, and over gRPC. The numbers
must equal what mcserve's own REST API answers for the same images (and seed)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import V2Server

M = "fashion-mnist-dropout-mlp"
MC = M + "-mc"
EVAL_OUTPUTS = ("probabilities", "class_id", "input_residual", "input_outlier")
MC_OUTPUTS = (
    "mean_probabilities", "variance", "std", "predictive_entropy", "expected_entropy", "mutual_information",
    "uncertain", "class_id", "input_residual", "input_outlier",
)  # fmt: skip
REST_MC = {  # v2 output -> the REST prediction field
    "mean_probabilities": "mean_probabilities",
    "variance": "variance",
    "std": "std",
    "predictive_entropy": "predictive_entropy",
    "expected_entropy": "expected_entropy",
    "mutual_information": "mutual_information",
    "uncertain": "uncertain",
    "class_id": "class_id",
    "input_outlier": "input_outlier",
    "input_residual": "input_residual",
}
TRANSPORTS = ("http-binary", "http-json", "grpc")


def _client(server: V2Server, transport: str) -> Any:
    if transport == "grpc":
        return grpcclient.InferenceServerClient(url=server.grpc)
    return httpclient.InferenceServerClient(url=server.http)


def _infer(
    server: V2Server, transport: str, model: str, x: np.ndarray, parameters: dict[str, Any] | None = None
) -> Any:
    client = _client(server, transport)
    if transport == "grpc":
        inp = grpcclient.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp], parameters=parameters, request_id="req-1")
    binary = transport == "http-binary"
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    names = EVAL_OUTPUTS if model == M else MC_OUTPUTS
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    return client.infer(model, [inp], outputs=outputs, parameters=parameters, request_id="req-1")


@pytest.fixture(scope="module")
def images(test_images: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return test_images[0][:5].astype(np.float32).reshape(5, 784)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_server_and_model_calls(v2_server: V2Server, transport: str) -> None:
    client = _client(v2_server, transport)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(M) and client.is_model_ready(MC)
    version = httpx.get(f"{v2_server.url}/v2/models/{M}").json()["versions"][0]
    assert client.is_model_ready(M, version)
    as_json = {"as_json": True} if transport == "grpc" else {}
    server = client.get_server_metadata(**as_json)
    assert server["name"] == "mcserve"
    assert set(server["extensions"]) == {"binary_tensor_data", "model_configuration", "statistics"}
    meta = client.get_model_metadata(MC, **as_json)
    assert meta["name"] == MC and meta["versions"] == [version] and meta["platform"] == "mcserve"
    assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]] == [
        ("images", "FP32", [-1, 784])
    ]
    assert [o["name"] for o in meta["outputs"]] == [
        *MC_OUTPUTS,
        "prediction_set",
        "abstain",
    ]  # the artifact is calibrated
    shapes = {o["name"]: [int(d) for d in o["shape"]] for o in meta["outputs"]}
    assert shapes["mean_probabilities"] == [-1, 10] and shapes["uncertain"] == [-1]
    config = client.get_model_config(M, **as_json)
    config = config.get("config", config)  # gRPC wraps it in ModelConfigResponse
    assert config["name"] == M and int(config["max_batch_size"]) == 8  # MCSERVE_MAX_BATCH of the fixture
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == [
        ("images", "TYPE_FP32", [784])
    ]
    assert [o["name"] for o in config["output"]] == list(EVAL_OUTPUTS)
    stats = client.get_inference_statistics(M, **as_json)
    assert stats["model_stats"][0]["name"] == M


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_eval_model_equals_predict(v2_server: V2Server, images: np.ndarray, transport: str) -> None:
    result = _infer(v2_server, transport, M, images)
    rest = httpx.post(f"{v2_server.url}/predict", json={"images": images.tolist()}).json()["predictions"]
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (5, 10)
    np.testing.assert_allclose(probs, [p["probabilities"] for p in rest], rtol=0, atol=1e-6)
    assert result.as_numpy("class_id").tolist() == [p["class_id"] for p in rest]
    assert result.as_numpy("input_outlier").tolist() == [p["input_outlier"] for p in rest]
    np.testing.assert_allclose(result.as_numpy("input_residual"), [p["input_residual"] for p in rest], rtol=1e-6)
    response = result.get_response(as_json=True) if transport == "grpc" else result.get_response()
    assert response["id"] == "req-1" and response["model_name"] == M


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mc_model_equals_predict_uncertainty_for_the_same_seed(
    v2_server: V2Server, images: np.ndarray, transport: str
) -> None:
    result = _infer(v2_server, transport, MC, images, {"mc_samples": 25, "seed": 1234})
    body = {"images": images.tolist(), "n_samples": 25, "seed": 1234}
    rest = httpx.post(f"{v2_server.url}/predict/uncertainty", json=body).json()
    for output, field in REST_MC.items():
        got = result.as_numpy(output)
        want = np.array([p[field] for p in rest["predictions"]])
        assert got.shape == want.shape, output
        if got.dtype.kind == "f":
            tol = 1e-6 * np.abs(want).max() if output == "input_residual" else 1e-6
            np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=output)
        else:
            assert got.tolist() == want.tolist(), output
    response = result.get_response(as_json=True) if transport == "grpc" else result.get_response()
    params = {
        k: (v if not isinstance(v, dict) else int(next(iter(v.values())))) for k, v in response["parameters"].items()
    }
    assert params == {"mc_samples": 25, "seed": 1234}


def test_same_seed_gives_bit_identical_answers_through_every_protocol(v2_server: V2Server, images: np.ndarray) -> None:
    answers = [_infer(v2_server, t, MC, images, {"mc_samples": 30, "seed": 7}) for t in TRANSPORTS]
    for name in MC_OUTPUTS:
        first = answers[0].as_numpy(name)
        for other in answers[1:]:
            assert other.as_numpy(name).tobytes() == first.tobytes(), name


def test_default_mc_samples_and_a_fresh_seed_that_reproduces(v2_server: V2Server, images: np.ndarray) -> None:
    first = _infer(v2_server, "http-binary", MC, images[:1]).get_response()
    assert first["parameters"]["mc_samples"] == 20  # MCSERVE_DEFAULT_SAMPLES of the fixture
    seed = first["parameters"]["seed"]
    again = _infer(v2_server, "grpc", MC, images[:1], {"seed": seed}).get_response(as_json=True)
    assert int(again["parameters"]["seed"]["int64_param"]) == seed


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_errors_reach_tritonclient_as_exceptions(v2_server: V2Server, images: np.ndarray, transport: str) -> None:
    client = _client(v2_server, transport)
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    t = "grpc" if transport == "grpc" else "http-binary"
    with pytest.raises(InferenceServerException, match="mc_samples"):
        _infer(v2_server, t, MC, images[:1], {"mc_samples": 5000})
    assert client.is_server_ready()
