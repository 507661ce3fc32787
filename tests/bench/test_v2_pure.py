"""The pure parts of ``python -m bench v2``: reading perf_analyzer's output, its command line, the ratios and the
report table (no servers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import perf, v2
from bench.tables import v2_table

# Captured from perf_analyzer 2.51.0 (`-f`) against Triton (PyTriton) over HTTP at concurrency 16.
TRITON_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "16,1475.77,116,770,3727,137,5527,533,0,10520,14709,16399,21098\n"
)
# Its stdout for a gRPC run against the floor at concurrency 64 (the part after the settings).
FLOOR_STDOUT = """\
Request concurrency: 64
  Client:
    Request count: 21820
    Throughput: 3946.56 infer/sec
    Avg latency: 16183 usec (standard deviation 3924 usec)
    p50 latency: 16855 usec
    p90 latency: 19113 usec
    p95 latency: 19587 usec
    p99 latency: 23210 usec
    Avg gRPC time: 16169 usec ((un)marshal request/response 4 usec + response wait 16165 usec)
  Server:
    Inference count: 21820
    Execution count: 21820
    Successful request count: 21820
    Avg request latency: 0 usec (overhead 0 usec + queue 0 usec + compute input 0 usec + compute infer 0 usec)

Inferences/Second vs. Client Average Batch Latency
Concurrency: 64, throughput: 3946.56 infer/sec, latency 16183 usec
"""
# A run whose server went away mid-measurement (exit 99).
FAILED_STDOUT = """\
Request concurrency: 4
Thread [1] had error: recvmsg:Connection reset by peer

Thread [2] had error: recvmsg:Connection reset by peer
"""


def test_parse_csv_reads_throughput_and_percentiles_in_ms() -> None:
    got = perf.parse_csv(TRITON_CSV)
    assert got == {
        "infer_per_s": 1475.77,
        "p50_ms": pytest.approx(10.52),
        "p90_ms": pytest.approx(14.709),
        "p95_ms": pytest.approx(16.399),
        "p99_ms": pytest.approx(21.098),
    }


def test_parse_csv_without_a_row_or_column_raises() -> None:
    with pytest.raises(ValueError, match="no result row"):
        perf.parse_csv(TRITON_CSV.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="lacks"):
        perf.parse_csv("Concurrency,Inferences/Second\n16,100.0\n")


def test_parse_stdout_takes_the_client_section_and_errors() -> None:
    got = perf.parse_stdout(FLOOR_STDOUT)
    assert got == {"requests": 21820, "avg_ms": pytest.approx(16.183), "error": None}
    failed = perf.parse_stdout(FAILED_STDOUT)
    assert failed["error"] == "recvmsg:Connection reset by peer"
    assert failed["requests"] is None
    crashed = perf.parse_stdout(
        "    Successful request count: 7233\nterminate called after throwing an instance of 'std::runtime_error'\n"
        "  what():  Server side statistics compute counts must be the same.\n"
    )
    assert crashed["error"] == "Server side statistics compute counts must be the same."
    usage = perf.parse_stdout("Error: The --request-parameter option is currently only supported by gRPC protocol.\n")
    assert usage["error"] == "The --request-parameter option is currently only supported by gRPC protocol."


def test_command_uses_the_same_flags_for_every_protocol(tmp_path: Path) -> None:
    data, out = tmp_path / "input.json", tmp_path / "r.csv"
    http = perf.command("pa", "m", "46200a645aa2", "127.0.0.1:18210", "http", 64, data, perf.QUICK, out)
    grpc = perf.command("pa", "m", "46200a645aa2", "127.0.0.1:18211", "grpc", 64, data, perf.QUICK, out)
    assert http[:9] == ["pa", "-m", "m", "-x", "46200a645aa2", "-u", "127.0.0.1:18210", "-i", "http"]
    text = " ".join(http)
    assert "--concurrency-range 64:64" in text and "--shape images:784" in text and f"-f {out}" in text
    assert f"--input-data {data}" in text and "--measurement-interval 1000" in text
    assert [a for a in http if a not in ("127.0.0.1:18210", "http")] == [
        a for a in grpc if a not in ("127.0.0.1:18211", "grpc")
    ]
    with pytest.raises(ValueError, match="http or grpc"):
        perf.command("pa", "m", "1", "h:1", "rest", 1, data, perf.QUICK, out)


def test_input_data_is_one_fp32_image(tmp_path: Path) -> None:
    path = perf.write_input_data(tmp_path / "input.json", list(range(256)) * 3 + [255] * 16)
    (item,) = json.loads(path.read_text())["data"]
    assert item["images"]["shape"] == [784]
    assert len(item["images"]["content"]) == 784 and item["images"]["content"][255] == 255.0


def test_metadata_version() -> None:
    assert v2.metadata_version({"versions": ["1", "3", "2"]}) == "3"
    assert v2.metadata_version({"versions": ["46200a645aa2"]}) == "46200a645aa2"
    with pytest.raises(ValueError, match="no versions"):
        v2.metadata_version({"name": "m"})


def test_ratios_at_c64_and_missing_sides() -> None:
    out = {
        "v2_http_infer_per_s_c64": 3000.0,
        "triton_v2_http_infer_per_s_c64": 1500.0,
        "v2_grpc_infer_per_s_c64": 2000,
        "triton_v2_grpc_infer_per_s_c64": 0.0,
        "grpc_floor_infer_per_s_c64": 4000.0,
        "v2_http_mc_t100_infer_per_s_c64": None,
    }
    got = v2.ratios(out)
    assert got["v2_http_vs_triton_c64"] == 2.0
    assert got["v2_grpc_vs_floor_c64"] == 0.5
    assert got["v2_grpc_vs_triton_c64"] is None  # zero denominator
    assert got["v2_http_mc_t100_vs_triton_c64"] is None
    assert got["triton_v2_grpc_vs_floor_c64"] == 0.0


def _result(rps: float, stable: bool = True) -> perf.PerfResult:
    return perf.PerfResult(rps, 1.0, 2.0, 3.0, 4.0, 1.5, 100, 0, stable, 2.0)


def test_record_and_failure_keys() -> None:
    out: dict[str, object] = {}
    v2.record(out, "v2_grpc", 16, _result(500.0), server_cpu_s=1.0)
    assert out["v2_grpc_infer_per_s_c16"] == 500.0 and out["v2_grpc_p99_ms_c16"] == 4.0
    assert out["v2_grpc_errors_c16"] == 0 and out["v2_grpc_stable_c16"] is True
    assert out["v2_grpc_server_cpu_ms_per_infer_c16"] == pytest.approx(1.0)  # 1 s CPU / (500/s x 2 s)
    v2.record_failure(out, ["v2_grpc"], "first")
    v2.record_failure(out, ["v2_grpc"], "second")
    assert out["v2_grpc_error"] == "first"
    assert out["v2_grpc_infer_per_s_c16"] == 500.0  # measured levels stay
    assert out["v2_grpc_infer_per_s_c64"] is None and out["v2_grpc_p99_ms_c1"] is None


def test_v2_table_marks_unstable_levels_and_failures() -> None:
    out: dict[str, object] = {}
    for c in v2.CONCURRENCY:
        v2.record(out, "triton_v2_http", c, _result(100.0 * c, stable=c != 64), server_cpu_s=None)
    v2.record_failure(out, ["v2_grpc"], "RuntimeError: mcserve died")
    out.update(v2.ratios(out))
    table = v2_table(out)
    assert "| Triton (PyTriton) v2 HTTP | 100 | 1,600 | 6,400\\* |" in table
    assert "mcserve v2 gRPC failed**: `RuntimeError: mcserve died`" in table
    assert "| mcserve ÷ Triton, v2 HTTP | n/a |" in table
    assert "mcserve v2 HTTP, MC" not in table  # never run: no row
    assert v2_table({}) == "_v2 benchmark not run_"
