"""service/v2/protos: our .proto files against Triton's own, as tritonclient ships them.

Wire compatibility is proven with tritonclient's generated messages (``tritonclient.grpc.service_pb2`` and
``model_config_pb2``): every message we define is built with a non-default value in every field, serialised by us
and parsed by tritonclient and the other way round; the descriptors agree field by field; the service has Triton's
name, methods and paths, and a real gRPC server made from our stubs answers tritonclient's own stub and client.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service
from tritonclient.grpc import service_pb2_grpc as triton_grpc

from service.v2 import protogen
from service.v2.stubs import METHODS, SERVICE_NAME, pb, pb_grpc

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "service/v2/protos"


# ---- one builder per message: the same code fills ours and tritonclient's (the field names are the same) ------


def _params(target: Any) -> None:
    """One parameter of every kind of InferParameter's oneof."""
    target["flag"].bool_param = True
    target["mc_samples"].int64_param = -7
    target["note"].string_param = "hello"
    target["ratio"].double_param = 0.25
    target["seed"].uint64_param = 2**63 + 5


def _contents(mod: ModuleType) -> Any:
    return mod.InferTensorContents(
        bool_contents=[True, False, True],
        int_contents=[-1, 2, -(2**31)],
        int64_contents=[-(2**40), 3],
        uint_contents=[7, 2**32 - 1],
        uint64_contents=[2**64 - 1, 1],
        fp32_contents=[0.5, -1.25],
        fp64_contents=[1e-300, -2.5],
        bytes_contents=[b"\x00\xff", b"abc"],
    )


def infer_request(svc: ModuleType, cfg: ModuleType) -> Message:
    req = svc.ModelInferRequest(model_name="fashion-mnist-dropout-mlp-mc", model_version="27c2d976c8aa", id="req-1")
    _params(req.parameters)
    raw = req.inputs.add(name="images", datatype="UINT8", shape=[2, 784])
    _params(raw.parameters)
    typed = req.inputs.add(name="typed", datatype="FP32", shape=[1, 2], contents=_contents(svc))
    typed.parameters["binary_data_size"].int64_param = 8
    out = req.outputs.add(name="mean_probabilities")
    _params(out.parameters)
    req.raw_input_contents.extend([bytes(range(256)) * 2, b""])
    return req


def infer_response(svc: ModuleType, cfg: ModuleType) -> Message:
    resp = svc.ModelInferResponse(model_name="fashion-mnist-dropout-mlp", model_version="27c2d976c8aa", id="req-1")
    _params(resp.parameters)
    out = resp.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10], contents=_contents(svc))
    _params(out.parameters)
    resp.outputs.add(name="class_id", datatype="INT64", shape=[1])
    resp.raw_output_contents.extend([np.arange(10, dtype="<f4").tobytes(), np.array([9], dtype="<i8").tobytes()])
    return resp


def model_config(cfg: ModuleType, policy: str) -> Any:
    config = cfg.ModelConfig(
        name="fashion-mnist-dropout-mlp",
        platform="mcserve",
        backend="mcserve",
        runtime="numpy",
        max_batch_size=256,
        default_model_filename="model.safetensors",
        model_transaction_policy=cfg.ModelTransactionPolicy(decoupled=True),
        response_cache=cfg.ModelResponseCache(enable=True),
        dynamic_batching=cfg.ModelDynamicBatching(
            preferred_batch_size=[1, 64],
            max_queue_delay_microseconds=500,
            preserve_ordering=True,
            priority_levels=2,
            default_priority_level=1,
        ),
    )
    if policy == "latest":
        config.version_policy.latest.num_versions = 1
    elif policy == "specific":
        config.version_policy.specific.versions.extend([1, 3])
    else:
        config.version_policy.all.SetInParent()
    config.input.add(
        name="images",
        data_type=cfg.TYPE_FP32,
        format=cfg.ModelInput.FORMAT_NCHW,
        dims=[784],
        reshape=cfg.ModelTensorReshape(shape=[28, 28]),
        is_shape_tensor=True,
        allow_ragged_batch=True,
        optional=True,
        is_non_linear_format_io=True,
    )
    config.output.add(
        name="class_id",
        data_type=cfg.TYPE_INT64,
        dims=[1],
        label_filename="labels.txt",
        reshape=cfg.ModelTensorReshape(shape=[]),
        is_shape_tensor=True,
        is_non_linear_format_io=True,
    )
    config.output.add(name="input_outlier", data_type=cfg.TYPE_BOOL, dims=[1])
    config.instance_group.add(
        name="cpu",
        kind=cfg.ModelInstanceGroup.KIND_CPU,
        count=1,
        gpus=[0, 1],
        profile=["default"],
        passive=True,
        host_policy="numa0",
    )
    config.metric_tags["team"] = "ml"
    config.parameters["mc_samples"].string_value = "100"
    return config


def statistics_response(svc: ModuleType, cfg: ModuleType) -> Message:
    def dur(n: int) -> Any:
        return svc.StatisticDuration(count=n, ns=1000 * n + 1)

    stats = svc.ModelStatistics(
        name="fashion-mnist-dropout-mlp",
        version="27c2d976c8aa",
        last_inference=1764556320000,
        inference_count=12,
        execution_count=5,
        inference_stats=svc.InferStatistics(
            success=dur(1),
            fail=dur(2),
            queue=dur(3),
            compute_input=dur(4),
            compute_infer=dur(5),
            compute_output=dur(6),
            cache_hit=dur(7),
            cache_miss=dur(8),
        ),
    )
    stats.batch_stats.add(batch_size=4, compute_input=dur(1), compute_infer=dur(2), compute_output=dur(3))
    stats.memory_usage.add(type="CPU", id=-1, byte_size=2**33)
    stats.response_stats["0"].CopyFrom(
        svc.InferResponseStatistics(
            compute_infer=dur(1),
            compute_output=dur(2),
            success=dur(3),
            fail=dur(4),
            empty_response=dur(5),
            cancel=dur(6),
        )
    )
    return svc.ModelStatisticsResponse(model_stats=[stats, svc.ModelStatistics(name="other")])


Builder = Callable[[ModuleType, ModuleType], Message]
CASES: dict[str, Builder] = {
    "ServerLiveRequest": lambda s, c: s.ServerLiveRequest(),
    "ServerLiveResponse": lambda s, c: s.ServerLiveResponse(live=True),
    "ServerReadyRequest": lambda s, c: s.ServerReadyRequest(),
    "ServerReadyResponse": lambda s, c: s.ServerReadyResponse(ready=True),
    "ModelReadyRequest": lambda s, c: s.ModelReadyRequest(name="m", version="abc123"),
    "ModelReadyResponse": lambda s, c: s.ModelReadyResponse(ready=True),
    "ServerMetadataRequest": lambda s, c: s.ServerMetadataRequest(),
    "ServerMetadataResponse": lambda s, c: s.ServerMetadataResponse(
        name="mcserve", version="0.1.0", extensions=["binary_tensor_data", "model_configuration", "statistics"]
    ),
    "ModelMetadataRequest": lambda s, c: s.ModelMetadataRequest(name="m", version="abc123"),
    "ModelMetadataResponse": lambda s, c: s.ModelMetadataResponse(
        name="m",
        versions=["abc123"],
        platform="mcserve",
        inputs=[s.ModelMetadataResponse.TensorMetadata(name="images", datatype="FP32", shape=[-1, 784])],
        outputs=[
            s.ModelMetadataResponse.TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, 10]),
            s.ModelMetadataResponse.TensorMetadata(name="uncertain", datatype="BOOL", shape=[-1]),
        ],
    ),
    "ModelInferRequest": infer_request,
    "ModelInferResponse": infer_response,
    "ModelConfigRequest": lambda s, c: s.ModelConfigRequest(name="m", version="abc123"),
    "ModelConfigResponse-latest": lambda s, c: s.ModelConfigResponse(config=model_config(c, "latest")),
    "ModelConfigResponse-specific": lambda s, c: s.ModelConfigResponse(config=model_config(c, "specific")),
    "ModelConfigResponse-all": lambda s, c: s.ModelConfigResponse(config=model_config(c, "all")),
    "ModelStatisticsRequest": lambda s, c: s.ModelStatisticsRequest(name="m", version="abc123"),
    "ModelStatisticsResponse": statistics_response,
}


def ours(case: str) -> Message:
    return CASES[case](pb, pb)


def theirs(case: str) -> Message:
    return CASES[case](triton_service, triton_config)


def as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


@pytest.mark.parametrize("case", list(CASES))
def test_ours_parse_as_tritons_and_back(case: str) -> None:
    mine, triton = ours(case), theirs(case)
    assert type(mine).DESCRIPTOR.name == type(triton).DESCRIPTOR.name == case.split("-")[0]
    parsed_by_triton = type(triton).FromString(mine.SerializeToString())
    parsed_by_us = type(mine).FromString(triton.SerializeToString())
    assert as_dict(parsed_by_triton) == as_dict(triton)
    assert as_dict(parsed_by_us) == as_dict(mine)
    assert as_dict(mine) == as_dict(triton)  # the builders really set the same values on both sides
    assert parsed_by_triton == triton and parsed_by_us == mine  # field by field, all the way down
    assert not _unknown_fields(parsed_by_us), "tritonclient wrote fields we do not declare"
    assert mine.SerializeToString(deterministic=True) == triton.SerializeToString(deterministic=True)


def _unknown_fields(message: Message) -> list[str]:
    from google.protobuf.unknown_fields import UnknownFieldSet

    found = [f"{message.DESCRIPTOR.full_name}#{f.field_number}" for f in UnknownFieldSet(message)]
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            values = list(value.values()) if field.message_type.fields_by_name["value"].message_type else []
        else:
            values = list(value) if field.is_repeated else [value]
        for item in values:
            found += _unknown_fields(item)
    return found


def _set_fields(message: Message, seen: set[str]) -> None:
    for field, value in message.ListFields():
        seen.add(field.full_name)
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        entry = field.message_type
        if entry.GetOptions().map_entry:
            seen.update(f.full_name for f in entry.fields)
            items = list(value.values()) if entry.fields_by_name["value"].message_type else []
        else:
            items = list(value) if field.is_repeated else [value]
        for item in items:
            _set_fields(item, seen)


def _all_fields(descriptor: Descriptor, out: set[str]) -> set[str]:
    for field in descriptor.fields:
        if field.full_name not in out:
            out.add(field.full_name)
            if field.message_type is not None:
                _all_fields(field.message_type, out)
    return out


def test_the_cases_set_every_field_of_every_message_we_define(our_service: ServiceDescriptor) -> None:
    """Non-default values everywhere, so the round trips above cover every field number and type."""
    seen: set[str] = set()
    for case in CASES:
        _set_fields(ours(case), seen)
    declared: set[str] = set()
    for descriptor in pb.DESCRIPTOR.message_types_by_name.values():
        _all_fields(descriptor, declared)
    assert declared - seen == set()
    roots = {case.split("-")[0] for case in CASES}
    rpc_types = {m.input_type.name for m in our_service.methods} | {m.output_type.name for m in our_service.methods}
    assert rpc_types <= roots  # every request and response of every method has a case


# ---- descriptors, field by field --------------------------------------------------------------------------------


def _triton_message(name: str) -> Descriptor:
    for module in (triton_service, triton_config):
        if name in module.DESCRIPTOR.message_types_by_name:
            return module.DESCRIPTOR.message_types_by_name[name]
    raise AssertionError(f"tritonclient has no message {name}")


def _relative(full_name: str) -> str:
    return full_name.split(".", 2)[-1] if full_name.startswith("mcserve.v2.") else full_name.split(".", 1)[-1]


def _compare_enum(mine: EnumDescriptor, triton: EnumDescriptor) -> None:
    assert _relative(mine.full_name) == _relative(triton.full_name)
    assert {v.name: v.number for v in mine.values}.items() <= {v.name: v.number for v in triton.values}.items()


def _compare_message(mine: Descriptor, triton: Descriptor) -> None:
    assert _relative(mine.full_name) == _relative(triton.full_name)
    for field in mine.fields:
        other = triton.fields_by_number.get(field.number)
        where = f"{mine.full_name}.{field.name} = {field.number}"
        assert other is not None, f"{where}: no such field number in Triton's {triton.full_name}"
        assert (field.name, field.type, field.is_repeated) == (other.name, other.type, other.is_repeated), where
        assert (field.containing_oneof is None) == (other.containing_oneof is None), where
        if field.containing_oneof is not None:
            assert field.containing_oneof.name == other.containing_oneof.name, where
        if field.enum_type is not None:
            _compare_enum(field.enum_type, other.enum_type)
        if field.message_type is not None:
            assert field.message_type.GetOptions().map_entry == other.message_type.GetOptions().map_entry, where
            _compare_message(field.message_type, other.message_type)
    for nested in mine.enum_types:
        _compare_enum(nested, triton.enum_types_by_name[nested.name])


@pytest.mark.parametrize("name", sorted(pb.DESCRIPTOR.message_types_by_name))
def test_every_message_matches_tritons_field_numbers_names_and_types(name: str) -> None:
    _compare_message(pb.DESCRIPTOR.message_types_by_name[name], _triton_message(name))


def test_data_type_enum_is_tritons() -> None:
    mine = pb.DESCRIPTOR.enum_types_by_name["DataType"]
    triton = triton_config.DESCRIPTOR.enum_types_by_name["DataType"]
    assert [(v.name, v.number) for v in mine.values] == [(v.name, v.number) for v in triton.values]
    assert pb.TYPE_BOOL == 1 and pb.TYPE_UINT8 == 2 and pb.TYPE_INT64 == 9 and pb.TYPE_FP32 == 11


def test_our_messages_live_in_their_own_package() -> None:
    assert pb.DESCRIPTOR.package == "mcserve.v2"
    assert pb.DESCRIPTOR.name == "service/v2/protos/mcserve_v2.proto"
    assert triton_service.DESCRIPTOR.package == "inference"


# ---- the service ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def our_service(tmp_path_factory: pytest.TempPathFactory) -> ServiceDescriptor:
    """inference.proto compiled into a private pool (importing inference_pb2 would clash with tritonclient's)."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("protos") / "mcserve_v2.descriptor_set"
    include = Path(str(resources.files("grpc_tools") / "_proto"))
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--descriptor_set_out={out}", "--include_imports"]
    assert protoc.main([*args, *(str(PROTO_DIR / name) for name in protogen.PROTOS)]) == 0
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return pool.FindServiceByName(SERVICE_NAME)


def test_service_name_methods_and_types_are_tritons(our_service: ServiceDescriptor) -> None:
    mine = our_service
    triton = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert mine.full_name == triton.full_name == SERVICE_NAME
    assert [m.name for m in mine.methods] == list(METHODS)
    for method in mine.methods:
        other = triton.methods_by_name[method.name]
        assert method.input_type.name == other.input_type.name and method.output_type.name == other.output_type.name
        assert method.input_type.full_name == f"mcserve.v2.{other.input_type.name}"
        assert (method.client_streaming, method.server_streaming) == (other.client_streaming, other.server_streaming)


class _RecordingChannel:
    """Collects the method paths a generated stub asks a channel for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def unary_unary(self, path: str, *args: object, **kwargs: object) -> None:
        self.paths.append(path)

    unary_stream = stream_unary = stream_stream = unary_unary


def test_method_paths_are_tritons() -> None:
    mine, triton = _RecordingChannel(), _RecordingChannel()
    pb_grpc.GRPCInferenceServiceStub(mine)
    triton_grpc.GRPCInferenceServiceStub(triton)
    assert mine.paths == [f"/inference.GRPCInferenceService/{name}" for name in METHODS]
    assert set(mine.paths) <= set(triton.paths)
    assert "/inference.GRPCInferenceService/ModelInfer" in mine.paths


# ---- a real gRPC server from our stubs, called by tritonclient ---------------------------------------------------


class _EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Answers every method with fixed values built by the cases above; ModelInfer echoes the request."""

    def ServerLive(self, request: Any, context: Any) -> Any:
        return ours("ServerLiveResponse")

    def ServerReady(self, request: Any, context: Any) -> Any:
        return ours("ServerReadyResponse")

    def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name == "m" and request.version == "abc123")

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return ours("ServerMetadataResponse")

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        if request.name != "m":
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        return ours("ModelMetadataResponse")

    def ModelInfer(self, request: Any, context: Any) -> Any:
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version)
        response.id = request.id
        for key, value in request.parameters.items():
            response.parameters[key].CopyFrom(value)
        for tensor in request.inputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.extend(request.raw_input_contents)
        return response

    def ModelConfig(self, request: Any, context: Any) -> Any:
        return ours("ModelConfigResponse-latest")

    def ModelStatistics(self, request: Any, context: Any) -> Any:
        return ours("ModelStatisticsResponse")


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_tritonclients_stub_calls_every_method_of_a_server_built_from_our_stubs(echo_server: str) -> None:
    with grpc.insecure_channel(echo_server) as channel:
        stub = triton_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(triton_service.ServerLiveRequest(), timeout=10) == theirs("ServerLiveResponse")
        assert stub.ServerReady(triton_service.ServerReadyRequest(), timeout=10) == theirs("ServerReadyResponse")
        assert stub.ModelReady(theirs("ModelReadyRequest"), timeout=10).ready
        assert stub.ServerMetadata(theirs("ServerMetadataRequest"), timeout=10) == theirs("ServerMetadataResponse")
        assert stub.ModelMetadata(theirs("ModelMetadataRequest"), timeout=10) == theirs("ModelMetadataResponse")
        assert stub.ModelConfig(theirs("ModelConfigRequest"), timeout=10) == theirs("ModelConfigResponse-latest")
        assert stub.ModelStatistics(theirs("ModelStatisticsRequest"), timeout=10) == theirs("ModelStatisticsResponse")
        request = theirs("ModelInferRequest")
        response = stub.ModelInfer(request, timeout=10)
        assert response.id == "req-1" and response.parameters == request.parameters
        assert [o.name for o in response.outputs] == ["images", "typed"]
        assert list(response.raw_output_contents) == list(request.raw_input_contents)
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelMetadata(triton_service.ModelMetadataRequest(name="nope"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as unimplemented:  # Triton has it, we do not declare it
            stub.RepositoryIndex(triton_service.RepositoryIndexRequest(), timeout=10)
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_tritonclients_inference_client_works_against_our_stubs(echo_server: str) -> None:
    with tritongrpc.InferenceServerClient(echo_server) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("m", "abc123")
        assert client.get_server_metadata().extensions == ["binary_tensor_data", "model_configuration", "statistics"]
        config = client.get_model_config("m").config
        assert config.max_batch_size == 256 and config.input[0].data_type == triton_config.TYPE_FP32
        assert client.get_inference_statistics("m").model_stats[0].inference_count == 12
        images = np.arange(2 * 784, dtype=np.float32).reshape(2, 784) / 8
        tensor = tritongrpc.InferInput("images", [2, 784], "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("m", [tensor], model_version="abc123", request_id="r7", parameters={"mc_samples": 3})
        np.testing.assert_array_equal(result.as_numpy("images"), images)
        assert result.get_response().id == "r7"
        assert result.get_response().parameters["mc_samples"].int64_param == 3


# ---- one process, both sets of modules; the generated files are current ------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("first", ["ours", "tritonclient"])
def test_ours_and_tritonclients_modules_share_a_process(first: str) -> None:
    imports = {
        "ours": "import service.v2.stubs as s; import service.v2.protos.mcserve_v2_pb2_grpc",
        "tritonclient": "import tritonclient.grpc, tritonclient.grpc.aio, tritonclient.grpc.service_pb2_grpc",
    }
    second = "tritonclient" if first == "ours" else "ours"
    code = f"""
import sys
{imports[first]}
{imports[second]}
from google.protobuf import descriptor_pool
pool = descriptor_pool.Default()
assert pool.FindMessageTypeByName("mcserve.v2.ModelInferRequest").file.name == "service/v2/protos/mcserve_v2.proto"
assert pool.FindMessageTypeByName("inference.ModelInferRequest").file.name == "grpc_service.proto"
assert "service.v2.protos.inference_pb2" not in sys.modules
print("ok")
"""
    out = _python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_stubs_say_how_to_generate_them_when_missing() -> None:
    out = _python(
        "import sys; sys.modules['service.v2.protos.mcserve_v2_pb2'] = None\n"
        "try:\n    import service.v2.stubs\nexcept ImportError as exc:\n    print(exc)\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "have not been generated" in out.stdout and "python -m service.v2.protogen" in out.stdout
    assert "make install" in out.stdout


def test_protogen_without_grpcio_tools_exits_nonzero_with_a_clear_message() -> None:
    out = _python(
        "import sys, runpy; sys.modules['grpc_tools'] = None\n"
        "runpy.run_module('service.v2.protogen', run_name='__main__')\n"
    )
    assert out.returncode == 1
    assert "grpcio-tools is not installed" in out.stderr and "make install" in out.stderr


def test_protogen_is_idempotent_and_the_checked_out_stubs_are_current(tmp_path: Path) -> None:
    """Generate from a copy of the .proto files: the same bytes as the stubs in the tree, and a rerun writes nothing."""
    (tmp_path / "service/v2/protos").mkdir(parents=True)
    for name in protogen.PROTOS:
        (tmp_path / "service/v2/protos" / name).write_bytes((PROTO_DIR / name).read_bytes())
    script = ROOT / "service/v2/protogen.py"  # as a file, the way the Docker build runs it
    first = subprocess.run(
        [sys.executable, str(script), "--root", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    written = sorted(p.name for p in (tmp_path / "service/v2/protos").glob("*_pb2*"))
    assert set(protogen.REQUIRED) <= set(written)
    assert first.stdout.count("protogen: wrote ") == len(written)
    for name in written:
        assert (tmp_path / "service/v2/protos" / name).read_bytes() == (PROTO_DIR / name).read_bytes(), (
            f"{name} is stale: run python -m service.v2.protogen"
        )
    again = subprocess.run(
        [sys.executable, str(script), "--root", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "wrote" not in again.stdout
    assert again.stdout.count("protogen: unchanged ") == len(written)
