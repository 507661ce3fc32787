"""The v2 bad-input tables: every malformed Open Inference Protocol request gets its documented error, over HTTP and
over gRPC, against the real server (``v2_server``), and the server stays up and counts each refusal.

HTTP cases are raw bodies (JSON, and Triton's binary tensor data with ``Inference-Header-Content-Length``), so the
table can hold what no client would build; gRPC cases are raw protobuf messages sent with mcserve's own stub. Each
expects a status (HTTP 400/404/405/413, never 5xx; a gRPC code), the v2 error shape ``{"error": "<message>"}`` (gRPC:
``details()``) and substrings of the message that name what is wrong (the input, parameter or field).
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from service.v2.stubs import SERVICE_NAME, pb, pb_grpc

from .conftest import V2Server

M = "fashion-mnist-dropout-mlp"
MC = M + "-mc"
# The fixture's limits (tests/service/v2/conftest.py), checked against the running server by ``limits_match``.
MAX_BATCH, MAX_SAMPLES, MAX_WORK = 8, 200, 800
OVER_WORK = MAX_WORK // MAX_SAMPLES + 1  # images that MAX_SAMPLES passes over exceed MAX_WORK
MAX_BODY = Settings.model_fields["max_body_bytes"].default  # not overridden by the fixture; gRPC's message cap too
HEADER = "Inference-Header-Content-Length"

IMAGE = (np.arange(784) % 256).astype(np.float32)  # one valid image on the 0-255 scale
PIXELS: list[Any] = IMAGE.tolist()
RAW = IMAGE.tobytes()


def infer_path(model: str = M, version: str | None = None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


# ---- HTTP ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpCase:
    id: str
    names: tuple[str, ...]  # substrings the error message must contain
    body: bytes = b""
    status: int = 400
    path: str = infer_path()
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    allow: str | None = None  # the Allow header of a 405


def tensor(data: Any = PIXELS, **fields: Any) -> dict[str, Any]:
    """One JSON input tensor: a valid ``images`` unless ``fields`` (name, datatype, shape, parameters) say otherwise."""
    t: dict[str, Any] = {"name": "images", "datatype": "FP32", "shape": [1, 784]} | fields
    if data is not None:
        t["data"] = data
    return t


def doc(*inputs: dict[str, Any], **top: Any) -> bytes:
    """A JSON inference request of ``inputs`` (one valid input when none are given) and top-level fields ``top``."""
    return json.dumps({"inputs": list(inputs) or [tensor()], **top}).encode()


def mc(id: str, names: tuple[str, ...], parameters: dict[str, Any], images: int = 1) -> HttpCase:
    """A case of ``images`` valid images to the MC model with request ``parameters``."""
    body = doc(tensor(PIXELS * images, shape=[images, 784]), parameters=parameters)
    return HttpCase(id, names, body, path=infer_path(MC))


def binary(data: bytes, header_length: Any = None, size: Any = None, **fields: Any) -> dict[str, Any]:
    """``body`` and ``headers`` of a binary-tensor request: a JSON header whose input says ``binary_data_size``
    ``size`` (default: the data's length), then ``data``; the header length defaults to the JSON header's own."""
    params = {"binary_data_size": len(data) if size is None else size}
    header = doc(tensor(None, parameters=params, **fields))
    length = len(header) if header_length is None else header_length
    return {"body": header + data, "headers": ((HEADER, str(length)),)}


def with_pixel(value: Any, index: int = 100) -> list[Any]:
    out = list(PIXELS)
    out[index] = value
    return out


def http_cases() -> list[HttpCase]:
    images, samples, seed = "input 'images'", "parameter 'mc_samples'", "parameter 'seed'"
    nan, inf = np.array(IMAGE), np.array(IMAGE)
    nan[7], inf[0] = np.nan, np.inf
    fp16 = IMAGE.astype(np.float16).tobytes()
    nested: Any = 0
    for _ in range(70):  # deeper than numpy's 64 dimensions
        nested = [nested]
    gz, br = (("Content-Encoding", "gzip"),), (("Content-Encoding", "br"),)
    too_big = len(RAW) * 2**12
    return [
        # datatypes
        HttpCase("datatype INT32", (images, "INT32"), doc(tensor(datatype="INT32"))),
        HttpCase("datatype BYTES", (images, "BYTES"), doc(tensor(["a"] * 784, datatype="BYTES"))),
        HttpCase("unknown datatype FP33", (images, "'FP33'"), doc(tensor(datatype="FP33"))),
        HttpCase("datatype not a string", (images, "datatype"), doc(tensor(datatype=11))),
        HttpCase("FP16 in JSON", (images, "FP16"), doc(tensor(datatype="FP16"))),
        HttpCase("FP16 binary", (images, "FP16"), **binary(fp16, datatype="FP16")),
        # data length against shape
        HttpCase("JSON too few values", (images, "783 values"), doc(tensor(PIXELS[:-1]))),
        HttpCase("JSON too many values", (images, "785 values"), doc(tensor([*PIXELS, 0.0]))),
        HttpCase("JSON one image for a batch of 2", (images, "784 values"), doc(tensor(shape=[2, 784]))),
        HttpCase("binary too few bytes", (images, f"{len(RAW) - 4} bytes"), **binary(RAW[:-4])),
        HttpCase("binary too many bytes", (images, f"{len(RAW) + 4} bytes"), **binary(RAW + bytes(4))),
        # shapes
        HttpCase("negative shape", (images, "negative"), doc(tensor(shape=[-1, 784]))),
        HttpCase("huge shape JSON", (images, "batch size 1000000000000"), doc(tensor(shape=[10**12, 784]))),
        HttpCase("huge shape binary", (images, "batch size 1000000000000"), **binary(RAW, shape=[10**12, 784])),
        HttpCase("huge shape MC", (images, "batch size"), doc(tensor(shape=[2**62, 784])), path=infer_path(MC)),
        HttpCase("shape [1, 783]", (images, "[1, 783]"), doc(tensor(PIXELS[:-1], shape=[1, 783]))),
        HttpCase("shape [1, 28, 27]", (images, "[1, 28, 27]"), doc(tensor(PIXELS[:-28], shape=[1, 28, 27]))),
        HttpCase("shape []", (images, "shape []"), doc(tensor([], shape=[]))),
        HttpCase("shape of strings", (images, "shape"), doc(tensor(shape=[1, "784"]))),
        HttpCase("shape not a list", (images, "shape"), doc(tensor(shape="1x784"))),
        HttpCase("batch of 0", (images, "batch size 0"), doc(tensor([], shape=[0, 784]))),
        HttpCase(
            "batch above max_batch",
            (images, f"batch size {MAX_BATCH + 1}", "MCSERVE_MAX_BATCH"),
            doc(tensor(PIXELS * (MAX_BATCH + 1), shape=[MAX_BATCH + 1, 784])),
        ),
        # binary tensor framing
        HttpCase("header length past the body", (HEADER, "past the end"), **binary(RAW, header_length=10**6)),
        HttpCase("header length not a number", (HEADER, "byte count"), **binary(RAW, header_length="12a")),
        HttpCase("header length negative", (HEADER, "byte count"), **binary(RAW, header_length=-1)),
        HttpCase("header length cuts the JSON", ("body", "JSON"), **binary(RAW, header_length=20)),
        HttpCase("binary_data_size past the data", (images, "binary_data_size"), **binary(RAW, size=len(RAW) + 1)),
        HttpCase("huge binary_data_size", (images, "binary_data_size"), **binary(RAW, size=10**15)),
        HttpCase(
            "extra trailing binary bytes", ("binary_data_size", "5 bytes"), **binary(RAW + bytes(5), size=len(RAW))
        ),
        HttpCase("binary_data_size a string", (images, "binary_data_size"), **binary(RAW, size="3136")),
        HttpCase(
            "data and binary_data_size", (images, "binary_data_size"), doc(tensor(parameters={"binary_data_size": 0}))
        ),
        # inputs
        HttpCase("unknown input name", ("input 'pixels'",), doc(tensor(name="pixels"))),
        HttpCase("two images inputs", ("inputs", "more than once"), doc(tensor(), tensor())),
        HttpCase("a second, unknown input", ("input 'mask'",), doc(tensor(), tensor(name="mask"))),
        HttpCase("no inputs", ("inputs", "no inputs"), b'{"inputs": []}'),
        HttpCase("inputs missing", ("inputs",), b"{}"),
        HttpCase("inputs not a list", ("inputs", "list"), json.dumps({"inputs": tensor()}).encode()),
        HttpCase("input not an object", ("inputs[0]",), b'{"inputs": [7]}'),
        HttpCase("input without a name", ("inputs[0].name",), b'{"inputs": [{"datatype": "FP32"}]}'),
        HttpCase("input without data", (images, "no data"), doc(tensor(None))),
        HttpCase("unknown input parameter", (images, "'shm_region'"), doc(tensor(parameters={"shm_region": "r"}))),
        # outputs
        HttpCase("unknown output", ("output 'logits'",), doc(outputs=[{"name": "logits"}])),
        HttpCase("MC output of the eval model", ("output 'variance'",), doc(outputs=[{"name": "variance"}])),
        HttpCase("duplicate output", ("output 'class_id'", "more than once"), doc(outputs=[{"name": "class_id"}] * 2)),
        HttpCase(
            "output parameter classification",
            ("output 'probabilities'", "'classification'"),
            doc(outputs=[{"name": "probabilities", "parameters": {"classification": 3}}]),
        ),
        HttpCase(
            "output binary_data not a boolean",
            ("output 'probabilities'", "binary_data"),
            doc(outputs=[{"name": "probabilities", "parameters": {"binary_data": "yes"}}]),
        ),
        HttpCase("outputs not a list", ("outputs",), doc(outputs={"name": "probabilities"})),
        HttpCase("output without a name", ("outputs[0]",), doc(outputs=[{}])),
        # model and version
        HttpCase("unknown model", ("model", "'nope'"), doc(), 404, infer_path("nope")),
        HttpCase("unknown version", ("model_version", "'999'"), doc(), 404, infer_path(M, "999")),
        HttpCase("unknown model metadata", ("'nope'",), status=404, path="/v2/models/nope", method="GET"),
        HttpCase("unknown model ready", ("'nope'",), status=404, path="/v2/models/nope/ready", method="GET"),
        HttpCase("unknown model config", ("'nope'",), status=404, path="/v2/models/nope/config", method="GET"),
        HttpCase("unknown model stats", ("'nope'",), status=404, path="/v2/models/nope/stats", method="GET"),
        HttpCase(
            "unknown version config", ("model_version", "'0'"), b"", 404, f"/v2/models/{MC}/versions/0/config", "GET"
        ),
        # top-level fields
        HttpCase("unknown top-level key", ("'inputz'",), doc(inputz=[])),
        HttpCase("id not a string", ("id",), doc(id=7)),
        HttpCase("parameters not an object", ("parameters",), doc(parameters=[1])),
        HttpCase(
            "binary_data_output not a boolean", ("binary_data_output",), doc(parameters={"binary_data_output": 1})
        ),
        # parameters: ill-typed, out of range, unknown
        mc("mc_samples string", (samples, "integer"), {"mc_samples": "10"}),
        mc("mc_samples float", (samples, "integer"), {"mc_samples": 10.0}),
        mc("mc_samples boolean", (samples, "integer"), {"mc_samples": True}),
        mc("mc_samples null", (samples, "integer"), {"mc_samples": None}),
        mc("mc_samples 0", (samples, "out of range"), {"mc_samples": 0}),
        mc("mc_samples above max", (samples, f"{MAX_SAMPLES + 1}"), {"mc_samples": MAX_SAMPLES + 1}),
        mc("mc_samples x images over max_work", (samples, "work limit"), {"mc_samples": MAX_SAMPLES}, images=OVER_WORK),
        mc("seed -1", (seed, "out of range"), {"seed": -1}),
        mc("seed 2**63", (seed, "out of range"), {"seed": 2**63}),
        mc("seed string", (seed, "integer"), {"seed": "1"}),
        mc("unknown parameter (MC model)", ("parameter 'temperature'",), {"temperature": 1}),
        HttpCase("unknown parameter (eval model)", ("parameter 'temperature'",), doc(parameters={"temperature": 1})),
        HttpCase("mc_samples on the eval model", (samples, "no parameters"), doc(parameters={"mc_samples": 10})),
        # pixel values and data
        HttpCase("pixel 300", (images, "out of range"), doc(tensor(with_pixel(300.0)))),
        HttpCase("pixel -1", (images, "out of range"), doc(tensor(with_pixel(-1)))),
        HttpCase("UINT8 pixel 300", (images, "UINT8"), doc(tensor(with_pixel(300), datatype="UINT8"))),
        HttpCase("UINT8 pixel -1", (images, "UINT8"), doc(tensor(with_pixel(-1), datatype="UINT8"))),
        HttpCase("UINT8 pixel 1.5", (images, "UINT8"), doc(tensor(with_pixel(1.5), datatype="UINT8"))),
        HttpCase("NaN pixel (binary)", (images, "not finite"), **binary(nan.tobytes())),
        HttpCase("infinite pixel (binary)", (images, "not finite"), **binary(inf.tobytes())),
        HttpCase("string pixel", (images, "numbers"), doc(tensor(with_pixel("12")))),
        HttpCase("boolean pixel", (images, "numbers"), doc(tensor(with_pixel(True)))),
        HttpCase("boolean pixel (UINT8)", (images, "numbers"), doc(tensor(with_pixel(True), datatype="UINT8"))),
        HttpCase("all-boolean data", (images, "numbers"), doc(tensor([False] * 784))),
        HttpCase("null pixel", (images, "numbers"), doc(tensor(with_pixel(None)))),
        HttpCase("ragged data", (images, "regular"), doc(tensor([PIXELS[:400], PIXELS[400:]]))),
        HttpCase("data too deeply nested", (images, "regular"), doc(tensor(nested))),
        HttpCase("data not a list", (images, "'data'"), doc(tensor("0,0,0"))),
        # the body
        HttpCase("invalid JSON", ("body", "JSON"), b'{"inputs": [{"name": "images",'),
        HttpCase("NaN token in JSON", ("body", "JSON"), b'{"inputs": [{"data": [NaN]}]}'),
        HttpCase("JSON array, not an object", ("body", "object"), b"[]"),
        HttpCase("JSON null", ("body", "object"), b"null"),
        HttpCase("empty body", ("body", "JSON"), b""),
        HttpCase("body over MCSERVE_MAX_BODY_BYTES", ("body", "MCSERVE_MAX_BODY_BYTES"), bytes(MAX_BODY + 1), 413),
        HttpCase(
            "gzip past MCSERVE_MAX_BODY_BYTES",
            ("body", "MCSERVE_MAX_BODY_BYTES"),
            gzip.compress(bytes(too_big)),
            413,
            headers=gz,
        ),
        HttpCase("unsupported Content-Encoding", ("Content-Encoding", "'br'"), doc(), headers=br),
        HttpCase("invalid gzip", ("body", "gzip"), b"not gzip at all", headers=gz),
        # routes and methods
        HttpCase("GET on infer", ("/infer", "POST"), status=405, method="GET", allow="POST"),
        HttpCase("POST on health/ready", ("/v2/health/ready", "GET"), doc(), 405, "/v2/health/ready", allow="GET"),
        HttpCase("DELETE a model", (f"/v2/models/{M}", "GET"), b"", 405, f"/v2/models/{M}", "DELETE", allow="GET"),
        HttpCase("unknown v2 path", ("/v2/nope",), status=404, path="/v2/nope", method="GET"),
        HttpCase("unknown model action", (f"/v2/models/{M}/predict",), doc(), 404, f"/v2/models/{M}/predict"),
        HttpCase("versions without a version", ("/versions",), b"", 404, f"/v2/models/{M}/versions", "GET"),
    ]


HTTP_CASES = http_cases()


@pytest.fixture(scope="module")
def http(v2_server: V2Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=v2_server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module", autouse=True)
def limits_match(v2_server: V2Server) -> None:
    s = v2_server.settings
    assert (int(s["MAX_BATCH"]), int(s["MAX_SAMPLES"]), int(s["MAX_WORK"])) == (MAX_BATCH, MAX_SAMPLES, MAX_WORK)
    assert "MAX_BODY_BYTES" not in s


def send(http: httpx.Client, case: HttpCase) -> httpx.Response:
    content = case.body if case.body or case.method == "POST" else None
    return http.request(case.method, case.path, content=content, headers=dict(case.headers))


def test_the_tables_are_big_enough_and_ids_unique() -> None:
    assert len(HTTP_CASES) >= 30 and len(GRPC_CASES) >= 30
    assert len({c.id for c in HTTP_CASES}) == len(HTTP_CASES)
    assert len({c.id for c in GRPC_CASES}) == len(GRPC_CASES)


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c.id)
def test_http_bad_input_gets_its_status_naming_the_culprit(http: httpx.Client, case: HttpCase) -> None:
    r = send(http, case)
    assert r.status_code == case.status, f"{case.id}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for name in case.names:
        assert name in body["error"], (name, body["error"])
    assert r.headers.get("allow") == case.allow
    assert http.get("/v2/health/ready").status_code == 200


def test_http_still_serves_after_the_table(http: httpx.Client) -> None:
    for case in HTTP_CASES:  # once more, back to back
        send(http, case)
    assert http.get("/v2/health/ready").status_code == 200
    answers = []  # the same image as flat FP32, nested FP32 and UINT8 JSON data: the same probabilities
    nested = IMAGE.reshape(28, 28).tolist()
    for t in (tensor(), tensor(nested, shape=[1, 28, 28]), tensor([int(v) for v in PIXELS], datatype="UINT8")):
        r = http.post(infer_path(), content=doc(t))
        assert r.status_code == 200, r.text
        answers.append(r.json()["outputs"][0])
    assert answers[0]["name"] == "probabilities" and answers[1:] == answers[:1] * 2
    request = binary(RAW)
    r = http.post(infer_path(MC), content=request["body"], headers=dict(request["headers"]))
    assert r.status_code == 200 and r.json()["parameters"]["mc_samples"] == 20  # the fixture's default_samples


# ---- gRPC ---------------------------------------------------------------------------------------------------------
Params = dict[str, dict[str, Any]]  # name -> InferParameter fields, e.g. {"mc_samples": {"int64_param": 5}}


def _set(target: Any, params: Params | None) -> None:
    for key, value in (params or {}).items():
        target[key].CopyFrom(pb.InferParameter(**value))


def infer(
    model: str = M,
    *,
    datatype: str = "FP32",
    shape: tuple[int, ...] = (1, 784),
    raw: tuple[bytes, ...] | None = (RAW,),
    contents: dict[str, Any] | None = None,
    names: tuple[str, ...] = ("images",),
    parameters: Params | None = None,
    input_parameters: Params | None = None,
    outputs: tuple[str, ...] = (),
    output_parameters: Params | None = None,
    version: str = "",
) -> Any:
    """A raw ModelInferRequest: one valid ``images`` input in raw_input_contents unless the arguments say otherwise."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name in names:
        t = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
        if contents is not None:
            t.contents.CopyFrom(pb.InferTensorContents(**contents))
        _set(t.parameters, input_parameters)
    for output in outputs:
        _set(request.outputs.add(name=output).parameters, output_parameters)
    _set(request.parameters, parameters)
    if raw is not None:
        request.raw_input_contents.extend(raw)
    return request


def mc_infer(**parameters: dict[str, Any]) -> Any:
    return infer(MC, parameters=parameters)


@dataclass(frozen=True)
class GrpcCase:
    id: str
    names: tuple[str, ...]  # substrings details() must contain
    request: Any
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    method: str = "ModelInfer"
    counted: bool = True  # False: refused by gRPC itself (message size), before mcserve sees it


def grpc_cases() -> list[GrpcCase]:
    images, samples, seed = "input 'images'", "parameter 'mc_samples'", "parameter 'seed'"
    missing = grpc.StatusCode.NOT_FOUND
    nan, hot = np.array(IMAGE), np.array(IMAGE)
    nan[3], hot[5] = np.nan, 300.0
    ints = [int(v) for v in PIXELS]
    fp16 = IMAGE.astype(np.float16).tobytes()
    return [
        # raw contents and typed contents
        GrpcCase("two raw contents for one input", ("raw_input_contents", "2 entries"), infer(raw=(RAW, RAW))),
        GrpcCase("raw contents, no inputs", ("raw_input_contents", "0 inputs"), infer(names=())),
        GrpcCase("raw too few bytes", (images, f"{len(RAW) - 4} bytes"), infer(raw=(RAW[:-4],))),
        GrpcCase("raw too many bytes", (images, f"{len(RAW) + 4} bytes"), infer(raw=(RAW + bytes(4),))),
        GrpcCase("raw empty", (images, "0 bytes"), infer(raw=(b"",))),
        GrpcCase(
            "fp32_contents too few", (images, "783 values"), infer(raw=None, contents={"fp32_contents": PIXELS[:-1]})
        ),
        GrpcCase(
            "fp32_contents too many", (images, "785 values"), infer(raw=None, contents={"fp32_contents": [*PIXELS, 0]})
        ),
        GrpcCase(
            "FP32 as int_contents",
            (images, "int_contents", "fp32_contents"),
            infer(raw=None, contents={"int_contents": ints}),
        ),
        GrpcCase(
            "UINT8 as fp32_contents",
            (images, "fp32_contents", "uint_contents"),
            infer(datatype="UINT8", raw=None, contents={"fp32_contents": PIXELS}),
        ),
        GrpcCase(
            "two kinds of contents",
            (images, "int64_contents"),
            infer(raw=None, contents={"fp32_contents": PIXELS, "int64_contents": [1]}),
        ),
        GrpcCase("contents and raw both set", (images, "both"), infer(contents={"fp32_contents": PIXELS})),
        GrpcCase("no data", (images, "no data"), infer(raw=None)),
        # shapes
        GrpcCase("negative shape", (images, "negative"), infer(shape=(-1, 784))),
        GrpcCase("huge shape", (images, "batch size 1000000000000"), infer(shape=(10**12, 784))),
        GrpcCase("huge shape MC", (images, "batch size"), infer(MC, shape=(2**62, 784))),
        GrpcCase("shape [1, 783]", (images, "[1, 783]"), infer(shape=(1, 783))),
        GrpcCase("shape [1, 28, 27]", (images, "[1, 28, 27]"), infer(shape=(1, 28, 27))),
        GrpcCase("shape []", (images, "shape []"), infer(shape=())),
        GrpcCase(
            "batch above max_batch",
            (images, f"batch size {MAX_BATCH + 1}"),
            infer(shape=(MAX_BATCH + 1, 784), raw=(RAW * (MAX_BATCH + 1),)),
        ),
        # datatypes
        GrpcCase("datatype INT32", (images, "INT32"), infer(datatype="INT32")),
        GrpcCase("unknown datatype FP33", (images, "'FP33'"), infer(datatype="FP33")),
        GrpcCase(
            "datatype BYTES", (images, "BYTES"), infer(datatype="BYTES", raw=None, contents={"bytes_contents": [b"x"]})
        ),
        GrpcCase("datatype FP16", (images, "FP16"), infer(datatype="FP16", raw=(fp16,))),
        GrpcCase("empty datatype", (images, "datatype"), infer(datatype="")),
        # model and version
        GrpcCase("unknown model", ("model", "'nope'"), infer("nope"), missing),
        GrpcCase("empty model name", ("model", "''"), infer(""), missing),
        GrpcCase("unknown version", ("model_version", "'999'"), infer(version="999"), missing),
        # parameters: ill-typed, out of range, unknown
        GrpcCase("mc_samples double_param", (samples, "integer"), mc_infer(mc_samples={"double_param": 10.0})),
        GrpcCase("mc_samples string_param", (samples, "integer"), mc_infer(mc_samples={"string_param": "10"})),
        GrpcCase("mc_samples bool_param", (samples, "integer"), mc_infer(mc_samples={"bool_param": True})),
        GrpcCase("mc_samples without a value", (samples, "no value"), mc_infer(mc_samples={})),
        GrpcCase("mc_samples 0", (samples, "out of range"), mc_infer(mc_samples={"int64_param": 0})),
        GrpcCase(
            "mc_samples above max",
            (samples, f"{MAX_SAMPLES + 1}"),
            mc_infer(mc_samples={"int64_param": MAX_SAMPLES + 1}),
        ),
        GrpcCase(
            "mc_samples x images over max_work",
            (samples, "work limit"),
            infer(
                MC,
                shape=(OVER_WORK, 784),
                raw=(RAW * OVER_WORK,),
                parameters={"mc_samples": {"int64_param": MAX_SAMPLES}},
            ),
        ),
        GrpcCase("seed -1", (seed, "out of range"), mc_infer(seed={"int64_param": -1})),
        GrpcCase("seed 2**63", (seed, "out of range"), mc_infer(seed={"uint64_param": 2**63})),
        GrpcCase("seed double_param", (seed, "integer"), mc_infer(seed={"double_param": 1.0})),
        GrpcCase(
            "unknown parameter (MC model)", ("parameter 'temperature'",), mc_infer(temperature={"int64_param": 1})
        ),
        GrpcCase(
            "unknown parameter (eval model)",
            ("parameter 'priority'",),
            infer(parameters={"priority": {"int64_param": 1}}),
        ),
        GrpcCase(
            "mc_samples on the eval model",
            (samples, "no parameters"),
            infer(parameters={"mc_samples": {"int64_param": 5}}),
        ),
        GrpcCase(
            "input parameter",
            (images, "'binary_data_size'"),
            infer(input_parameters={"binary_data_size": {"int64_param": 1}}),
        ),
        # outputs
        GrpcCase("unknown output", ("output 'logits'",), infer(outputs=("logits",))),
        GrpcCase("MC output of the eval model", ("output 'std'",), infer(outputs=("std",))),
        GrpcCase("duplicate output", ("output 'class_id'", "more than once"), infer(outputs=("class_id", "class_id"))),
        GrpcCase(
            "output parameter classification",
            ("output 'probabilities'", "'classification'"),
            infer(outputs=("probabilities",), output_parameters={"classification": {"int64_param": 3}}),
        ),
        # pixels
        GrpcCase("NaN pixel", (images, "not finite"), infer(raw=(nan.tobytes(),))),
        GrpcCase("pixel 300 (raw)", (images, "out of range"), infer(raw=(hot.tobytes(),))),
        GrpcCase(
            "pixel -1 (fp32_contents)",
            (images, "out of range"),
            infer(raw=None, contents={"fp32_contents": [-1.0] * 784}),
        ),
        GrpcCase(
            "UINT8 pixel 300 (uint_contents)",
            (images, "UINT8"),
            infer(datatype="UINT8", raw=None, contents={"uint_contents": [300] * 784}),
        ),
        # inputs
        GrpcCase("no inputs", ("inputs", "no inputs"), infer(names=(), raw=None)),
        GrpcCase("unknown input name", ("input 'pixels'",), infer(names=("pixels",))),
        GrpcCase("two images inputs", ("inputs", "more than once"), infer(names=("images", "images"), raw=(RAW, RAW))),
        GrpcCase(
            "message over the size cap",
            ("larger than max",),
            infer(raw=(bytes(MAX_BODY + 1),)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            counted=False,
        ),
        # the other model RPCs
        GrpcCase(
            "ModelMetadata unknown model", ("'nope'",), pb.ModelMetadataRequest(name="nope"), missing, "ModelMetadata"
        ),
        GrpcCase(
            "ModelMetadata unknown version",
            ("model_version", "'9'"),
            pb.ModelMetadataRequest(name=M, version="9"),
            missing,
            "ModelMetadata",
        ),
        GrpcCase("ModelConfig unknown model", ("'nope'",), pb.ModelConfigRequest(name="nope"), missing, "ModelConfig"),
        GrpcCase("ModelReady unknown model", ("'nope'",), pb.ModelReadyRequest(name="nope"), missing, "ModelReady"),
        GrpcCase(
            "ModelReady unknown version",
            ("model_version",),
            pb.ModelReadyRequest(name=MC, version="9"),
            missing,
            "ModelReady",
        ),
        GrpcCase(
            "ModelStatistics unknown model",
            ("'nope'",),
            pb.ModelStatisticsRequest(name="nope"),
            missing,
            "ModelStatistics",
        ),
    ]


GRPC_CASES = grpc_cases()


@pytest.fixture(scope="module")
def channel(v2_server: V2Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(v2_server.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def call(stub: Any, case: GrpcCase) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, case.method)(case.request, timeout=30)
    return info.value


@pytest.mark.parametrize("case", GRPC_CASES, ids=lambda c: c.id)
def test_grpc_bad_request_gets_its_code_naming_the_culprit(stub: Any, case: GrpcCase) -> None:
    error = call(stub, case)
    assert error.code() == case.code, f"{case.id}: {error.code()} {error.details()}"
    for name in case.names:
        assert name in error.details(), (name, error.details())
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def test_grpc_still_serves_after_the_table(stub: Any) -> None:
    for case in GRPC_CASES:  # once more, back to back
        call(stub, case)
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MC), timeout=10).ready
    response = stub.ModelInfer(mc_infer(mc_samples={"int64_param": 5}), timeout=30)
    assert response.parameters["mc_samples"].int64_param == 5
    assert response.outputs[0].name == "mean_probabilities"
    mean = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    assert mean.shape == (10,) and abs(float(mean.sum()) - 1) < 1e-4
    # the same image as raw FP32, fp32_contents and UINT8 uint_contents: the same probabilities
    forms = [
        infer(),
        infer(raw=None, contents={"fp32_contents": PIXELS}),
        infer(datatype="UINT8", raw=None, contents={"uint_contents": [int(v) for v in PIXELS]}),
    ]
    answers = [stub.ModelInfer(request, timeout=30).raw_output_contents[0] for request in forms]
    assert len(answers[0]) == 40 and answers[1:] == answers[:1] * 2


@pytest.mark.parametrize("service", ["", SERVICE_NAME])
def test_grpc_health_check_is_serving(channel: grpc.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_health_check_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# ---- metrics ------------------------------------------------------------------------------------------------------
Key = tuple[str, str, str]  # (protocol, route, status)
GRPC_HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: "400", grpc.StatusCode.NOT_FOUND: "404"}


def request_counts(http: httpx.Client) -> Counter[Key]:
    counts: Counter[Key] = Counter()
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "mcserve_http_requests_total" and sample.labels["protocol"] in ("v2_http", "v2_grpc"):
                labels = sample.labels
                counts[(labels["protocol"], labels["route"], labels["status"])] += int(sample.value)
    return counts


def test_metrics_count_every_refusal_as_4xx_and_none_as_5xx(http: httpx.Client, stub: Any) -> None:
    """Each table once more: every HTTP case under protocol v2_http with its status, every gRPC case under v2_grpc with
    its method's path and the HTTP equivalent of its code; nothing else grows, and no v2 series is a 5xx."""
    before = request_counts(http)
    for http_case in HTTP_CASES:
        send(http, http_case)
    for grpc_case in GRPC_CASES:
        call(stub, grpc_case)
    expected = len(HTTP_CASES) + sum(c.counted for c in GRPC_CASES)
    deadline = time.monotonic() + 10  # each server counts a request just after answering it: wait for the last ones
    while True:
        after = request_counts(http)
        grown: Counter[Key] = Counter({k: after[k] - before[k] for k in after if after[k] != before[k]})
        if grown.total() >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    by_status: Counter[str] = Counter()
    for (protocol, _, status), n in grown.items():
        if protocol == "v2_http":
            by_status[status] += n
    assert by_status == Counter(str(c.status) for c in HTTP_CASES)

    grpc_grown = {(route, status): n for (protocol, route, status), n in grown.items() if protocol == "v2_grpc"}
    want = Counter((f"/{SERVICE_NAME}/{c.method}", GRPC_HTTP_STATUS[c.code]) for c in GRPC_CASES if c.counted)
    assert grpc_grown == dict(want)
    assert not [k for k, n in after.items() if k[2].startswith("5") and n], "a v2 request was answered 5xx"
