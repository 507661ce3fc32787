"""Fast checks of the benchmark code's pure parts (no timing, no servers)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import kernels, loadgen
from bench.artifact import idx_image
from bench.timing import ratio, summarise, time_call
from mcnet import Architecture, DropoutMLP


def test_lua_script_embeds_body_verbatim_even_with_closing_brackets() -> None:
    body = json.dumps({"images": [[1, 2, 3]], "odd": "]]=]"})
    script = loadgen.lua_script(body)
    assert 'wrk.method = "POST"' in script
    assert "[==[" + body + "]==]" in script
    assert loadgen.RESULT_MARK in script and "latency:percentile(99)" in script


def test_parse_wrk_output_reads_summary_and_counts_errors() -> None:
    summary = {"requests": 100, "rps": 50.0, "p50_ms": 1.0, "p99_ms": 9.0, "errors_status": 2, "errors_timeout": 1}
    out = "Running 2s test\n  1 threads\n" + loadgen.RESULT_MARK + json.dumps(summary) + "\nRequests/sec: 50\n"
    parsed = loadgen.parse_wrk_output(out)
    assert parsed == summary
    assert loadgen.error_count(parsed) == 3


def test_parse_wrk_output_without_summary_raises() -> None:
    with pytest.raises(ValueError, match="no wrk summary"):
        loadgen.parse_wrk_output("unable to connect to 127.0.0.1:18100 Connection refused\n")


def test_summarise_ratio_and_time_call() -> None:
    t = summarise([3.0, 1.0, 2.0])
    assert (t.median_s, t.min_s, t.max_s, t.repeats) == (2.0, 1.0, 3.0, 3)
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None and ratio(1.0, 0.0) is None
    calls: list[int] = []
    timing = time_call(lambda: calls.append(1), warmup=2, min_repeats=4, max_repeats=4)
    assert timing.repeats == 4 and len(calls) == 6
    with pytest.raises(ValueError):
        summarise([])


def test_idx_image_reads_one_image() -> None:
    header = b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    raw = header + bytes([7]) * 784 + bytes(range(256)) * 3 + bytes(16)
    assert idx_image(raw, 0) == [7] * 784
    assert idx_image(raw, 1)[:3] == [0, 1, 2]
    with pytest.raises(ValueError):
        idx_image(b"\x00\x00\x08\x01" + raw[4:], 0)


def test_kernels_agree_when_dropout_is_off() -> None:
    torch.manual_seed(0)
    model = DropoutMLP(Architecture(dropout=(0.0, 0.0))).eval()
    x = torch.randint(0, 256, (3, 784)).float()
    gen = torch.Generator().manual_seed(0)
    expected = kernels.eval_forward(model, x)
    torch.testing.assert_close(kernels.naive_loop(model, x, 4, gen), expected)
    torch.testing.assert_close(kernels.repeat_batch(model, x, 4, gen), expected)
    logits = kernels.GemmLimit()(model, x, 4, gen)
    assert logits.shape == (12, 16)  # fc3's 10 outputs padded to 16 rows, as the service computes them
    torch.testing.assert_close(torch.softmax(logits[-3:, :10], -1), expected)
    assert not model.training


def test_rows_budget() -> None:
    assert kernels.rows_budget_ok(100, 32, 64_000)
    assert not kernels.rows_budget_ok(1000, 256, 64_000)


def test_active_gemm_limit_computes_the_same_logits_as_the_dense_limit() -> None:
    torch.manual_seed(0)
    model = DropoutMLP().eval()
    x = torch.randint(0, 256, (3, 784)).float()
    gen = torch.Generator().manual_seed(0)
    dense = kernels.GemmLimit()(model, x, 4, gen)[:, :10].reshape(4, 3, 10).transpose(0, 1)  # (pass, image)
    active = kernels.ActiveGemmLimit()(model, x, 4, gen)[:, :10].reshape(3, 4, 10)  # (image, pass)
    torch.testing.assert_close(active, dense, atol=1e-4, rtol=1e-5)
