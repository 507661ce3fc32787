"""The MC parts of ``python -m bench http`` without timing: the peers' MC dropout, the answer checks, the derived
keys, the MC floor's coalescing and the headline/MC tables."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from bench import checks, http, mcclaims
from bench.peers import common
from bench.tables import efficiency_target, headline, http_table, mc_table, overload_small_met
from mcnet import Architecture, DropoutMLP


def _model(dropout: tuple[float, float] = (0.2, 0.5)) -> DropoutMLP:
    torch.manual_seed(0)
    return DropoutMLP(Architecture(dropout=dropout)).eval()


def test_mc_dropout_without_dropout_is_the_eval_softmax_with_no_spread() -> None:
    model = _model((0.0, 0.0))
    x = torch.randint(0, 256, (3, 784)).float()
    mean, variance, mi = common.mc_dropout(model, x, 5)
    torch.testing.assert_close(mean, common.predict(model, x))
    assert variance.shape == (3, 10) and float(variance.abs().max()) < 1e-10
    assert mi.shape == (3,) and float(mi.abs().max()) < 1e-5
    assert not model.training  # dropout on for the call only (mc=True), the module stays in eval mode


def test_mc_dropout_is_bald_over_the_repeated_passes() -> None:
    model = _model()
    x = torch.randint(0, 256, (2, 784)).float()
    torch.manual_seed(1)
    mean, variance, mi = common.mc_dropout(model, x, 50)
    torch.manual_seed(1)  # the same masks: one forward pass of the input repeated 50 times
    with torch.inference_mode():
        probs = torch.softmax(model(x.repeat(50, 1), mc=True), -1).reshape(50, 2, 10)
    torch.testing.assert_close(mean, probs.mean(0))
    torch.testing.assert_close(variance, probs.var(0, unbiased=False))
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(mi, (entropy(probs.mean(0)) - entropy(probs).mean(0)).clamp_min(0))
    assert torch.allclose(mean.sum(-1), torch.ones(2)) and float(mi.min()) >= 0


def test_mc_many_groups_requests_by_t_and_hands_back_each_its_rows() -> None:
    model = _model((0.0, 0.0))
    xs = [torch.randint(0, 256, (k, 784)).float() for k in (1, 2, 1)]
    answers = common.mc_many(model, [(xs[0], 100), (xs[1], 3), (xs[2], 100)])
    assert [a[0].shape[0] for a in answers] == [1, 2, 1]
    for x, (mean, var, mi) in zip(xs, answers, strict=True):
        torch.testing.assert_close(mean, common.predict(model, x))
        assert var.shape == (x.shape[0], 10) and mi.shape == (x.shape[0],)
    body = common.encode_mc(*answers[1])
    assert [set(p) for p in body["predictions"]] == [
        {"class_id", "label", "mean_probabilities", "variance", "mutual_information"}
    ] * 2
    checks.check_mc_predictions(2)(json.loads(json.dumps(body)))


def test_n_samples_of_honours_the_body_and_defaults_to_100() -> None:
    assert common.n_samples_of({"images": [], "n_samples": 7, "seed": 1}) == 7
    assert common.n_samples_of({"images": []}) == common.MC_SAMPLES == 100
    assert common.n_samples_of({"n_samples": None}) == 100


def test_bodies_are_mcservers_and_the_v2_forms() -> None:
    image = list(range(256)) * 3 + [0] * 16
    b = http.bodies(image)
    assert json.loads(b["mc"]) == {"images": [image], "n_samples": 100}
    assert json.loads(b["predict"]) == {"images": [image]}
    v2 = json.loads(b["v2_mc"])
    assert v2["parameters"] == {"n_samples": 100} and v2["inputs"][0]["shape"] == [1, 784]
    assert v2["inputs"] == json.loads(b["v2"])["inputs"]


def _mc_row(mean: list[float]) -> dict[str, object]:
    return {"class_id": 0, "label": "x", "mean_probabilities": mean, "variance": [0.0] * 10, "mutual_information": 0.1}


def test_mc_answer_checks() -> None:
    good = {"predictions": [_mc_row([0.1] * 10)]}
    checks.check_mc_predictions(1)(good)
    with pytest.raises(ValueError, match="sum to 1"):
        checks.check_mc_predictions(1)({"predictions": [_mc_row([0.2] * 10)]})
    with pytest.raises(ValueError, match="expected 2"):
        checks.check_mc_predictions(2)(good)
    with pytest.raises(ValueError, match="variance"):
        checks.check_mc_predictions(1)({"predictions": [{**_mc_row([0.1] * 10), "variance": [0.0] * 9}]})
    with pytest.raises(ValueError, match="mutual information"):
        checks.check_mc_predictions(1)({"predictions": [{**_mc_row([0.1] * 10), "mutual_information": None}]})
    checks.check_predictions(1)({"predictions": [{"probabilities": [0.1] * 10}]})
    with pytest.raises(ValueError):
        checks.check_predictions(1)({"detail": "nope"})
    checks.check_json_object({"a": 1})
    with pytest.raises(ValueError):
        checks.check_json_object([1])


def test_v2_mc_answer_check() -> None:
    def out(name: str, shape: list[int], data: list[float]) -> dict[str, object]:
        return {"name": name, "datatype": "FP32", "shape": shape, "data": data}

    good = {
        "outputs": [
            out("mean_probabilities", [2, 10], [0.1] * 10 + [0.5, 0.5] + [0.0] * 8),
            out("variance", [2, 10], [0.0] * 20),
            out("mutual_information", [2, 1], [0.0, 0.2]),
        ]
    }
    checks.check_v2_mc(2)(good)
    bad = json.loads(json.dumps(good))
    bad["outputs"][0]["data"][11] = 0.9
    with pytest.raises(ValueError, match="sum to 1"):
        checks.check_v2_mc(2)(bad)
    with pytest.raises(ValueError, match="missing or misshapen"):
        checks.check_v2_mc(1)(good)


def test_mc_derived_keys() -> None:
    out = {
        "mc_kernel_us_per_image_b32_t100": 100.0,
        "uncertainty_t100_rps_c64": 4000.0,
        "mc_floor_rps_c64": 8000.0,
        "litserve_mc_t100_rps_c64": 250.0,
        "torchserve_mc_t100_rps_c64": None,
        "triton_mc_t100_rps_c64": 500.0,
    }
    got = mcclaims.mc_derived(out)
    assert got["mc_http_efficiency_c64"] == pytest.approx(0.4)
    assert got["mc_floor_efficiency_c64"] == pytest.approx(0.8)
    assert got["mc_vs_floor_c64"] == pytest.approx(0.5)
    assert got["mc_vs_best_peer_c64"] == pytest.approx(8.0) and got["mc_best_peer_c64"] == "triton"
    none = mcclaims.mc_derived({"uncertainty_t100_rps_c64": 4000.0, "litserve_mc_t100_rps_c64": None})
    assert none == {
        "mc_http_efficiency_c64": None,
        "mc_floor_efficiency_c64": None,
        "mc_vs_floor_c64": None,
        "mc_vs_best_peer_c64": None,
        "mc_best_peer_c64": None,
    }


def test_ab_summary_is_the_median_of_round_p99s() -> None:
    got = mcclaims.ab_summary({"on": [2.0, 100.0, 2.2, 2.4], "off": [2.0, 2.0, 90.0]})
    assert got["uncertainty_t100_p99_ms_c1_batch_on"] == pytest.approx(2.3)
    assert got["uncertainty_t100_p99_ms_c1_batch_off"] == 2.0
    assert got["uncertainty_t100_p99_c1_on_vs_off"] == pytest.approx(1.15)
    assert mcclaims.ab_summary({"on": [], "off": [1.0]})["uncertainty_t100_p99_c1_on_vs_off"] is None


def test_record_failure_gives_every_companion_a_null_and_keeps_what_was_measured() -> None:
    out: dict[str, object] = {"litserve_mc_t100_rps_c1": 100.0}
    http.record_failure(out, "litserve_mc_t100", "RuntimeError: boom")
    assert out["litserve_mc_t100_error"] == "RuntimeError: boom"
    assert out["litserve_mc_t100_rps_c1"] == 100.0
    for metric in http.METRICS:
        assert out[f"litserve_mc_t100_{metric}_c64"] is None


def test_mc_floor_coalesces_the_requests_waiting_at_once() -> None:
    from bench.peers.mc_floor import Floor

    floor = Floor()
    batches: list[int] = []
    floor.kernel = batches.append  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.gather(*(floor.submit() for _ in range(3)))  # arrive together: one call of 3
        first = floor.submit()
        await asyncio.sleep(0)  # the next loop iteration starts its call ...
        later = [floor.submit(), floor.submit()]  # ... these wait for it and then go together
        await asyncio.gather(first, *later)

    asyncio.run(scenario())
    assert batches == [3, 1, 2]
    assert (floor.calls, floor.served) == (3, 6)


def test_mc_floor_serves_a_constant_after_real_kernel_calls(
    trained_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.peers import mc_floor

    monkeypatch.setenv("MCSERVE_MODEL_DIR", str(trained_artifact))
    monkeypatch.setattr(mc_floor, "floor", mc_floor.Floor())
    threads = torch.get_num_threads()
    try:
        with TestClient(mc_floor.app) as client:
            assert client.get("/readyz").status_code == 200
            answer = client.post("/predict/uncertainty", content=b'{"images": [[0]], "n_samples": 100}')
            assert answer.status_code == 200 and answer.content == mc_floor.CONSTANT
            assert client.post("/predict/uncertainty", content=b"not even json").content == mc_floor.CONSTANT
        assert mc_floor.floor.calls == 2  # the kernel ran, in its worker thread, on one torch thread
        assert mc_floor.floor.executor.submit(torch.get_num_threads).result() == 1
    finally:
        torch.set_num_threads(threads)  # the floor sets it process-wide


def _sections(http_out: dict[str, object], **others: dict[str, object]) -> dict[str, dict[str, object]]:
    sec: dict[str, dict[str, object]] = {"kernel": {}, "http": http_out, "train": {}, "batching": {}, "v2": {}}
    return sec | others


def test_efficiency_target_falls_back_to_the_floor() -> None:
    assert efficiency_target(0.7) == (0.5, ">= 0.5")
    assert efficiency_target(None) == (0.5, ">= 0.5")
    target, text = efficiency_target(0.4)
    assert target == pytest.approx(0.32) and text == ">= 0.8 × floor = 0.32"


def test_headline_rows_for_mc_peers_efficiency_ab_and_missing_overload() -> None:
    h: dict[str, object] = {
        "uncertainty_t100_p99_c1_on_vs_off": 1.05,
        "uncertainty_t100_batch_ab_setting": "recognised",
        **mcclaims.mc_derived(
            {
                "mc_kernel_us_per_image_b32_t100": 100.0,
                "uncertainty_t100_rps_c64": 3000.0,
                "mc_floor_rps_c64": 4000.0,
                "torchserve_mc_t100_rps_c64": 400.0,
            }
        ),
    }
    table = headline(_sections(h))
    assert "| `/predict/uncertainty` (T=100) req/s ÷ TorchServe, the best MC peer, c=64 | >= 5 | 7.50 | yes |" in table
    assert "| >= 0.8 × floor = 0.32 | 0.30 | **no** |" in table  # floor 0.4: 0.5 out of reach
    assert "p99 at c=1 (interleaved A/B) | <= 1.1 | 1.05 | yes |" in table
    assert "| overload: slowest flood answer (s) | <= 30 | not run | not run |" in table
    assert "| MC kernel time / active-unit GEMM limit, B=1 T=100 | <= 2.5 | not run | not run |" in table
    assert "÷ bare uvicorn" not in table and "floor of decoding" not in table and "÷ bare FastAPI" not in table


def test_headline_overload_rows() -> None:
    o = {
        "overload_small_p95_s": 0.1,
        "overload_small_ok": 40,
        "overload_small_503_fraction": 0.2,
        "overload_small_503_p95_s": 0.01,
        "overload_invalid_p95_ms": 12.0,
        "overload_predict_p95_ms": 80.0,
        "overload_flood_max_s": 3.0,
        "overload_flood_bad_statuses": 0,
        "overload_rss_growth_mb": 5.5,
    }
    table = headline(_sections({}, overload=o))
    assert "p95 of its 200s (s) | <= 0.25, or a fast 503 | 0.10 | yes |" in table
    assert "| overload: `/predict` p95 under the flood (ms) | <= 50 | 80.00 | **no** |" in table
    assert "| overload: flood answers neither 200 nor 503 | <= 0 | 0 | yes |" in table
    assert "| overload: server RSS growth over the run (MiB) | - | 5.50 | - |" in table


def test_overload_small_met() -> None:
    assert overload_small_met({}) == "not run"
    base = {"overload_small_ok": 10, "overload_small_p95_s": 0.2, "overload_small_503_fraction": 0.0}
    assert overload_small_met(base) == "yes"
    assert overload_small_met({**base, "overload_small_p95_s": 0.4}) == "**no**"
    refused = {"overload_small_ok": 0, "overload_small_p95_s": None, "overload_small_503_fraction": 1.0}
    assert overload_small_met({**refused, "overload_small_503_p95_s": 0.01}) == "yes"  # every one a fast 503
    assert overload_small_met({**refused, "overload_small_503_p95_s": 2.0}) == "**no**"


def test_mc_table_and_http_rows_for_a_peer_that_could_not_run() -> None:
    h: dict[str, object] = {
        "uncertainty_t100_rps_c1": 500.0,
        "uncertainty_t100_rps_c64": 3000.0,
        "uncertainty_t100_p99_ms_c64": 40.0,
        "mc_floor_rps_c64": 4000.0,
        "mc_kernel_us_per_image_b32_t100": 100.0,
        "uncertainty_t100_p99_ms_c1_batch_on": 2.5,
        "uncertainty_t100_p99_ms_c1_batch_off": 2.0,
        "uncertainty_t100_p99_ms_c1_batch_on_rounds": [2.5, 2.5],
        "uncertainty_t100_p99_ms_c1_batch_off_rounds": [2.0, 2.0],
        "uncertainty_t100_p99_c1_on_vs_off": 1.25,
        "uncertainty_t100_batch_ab_setting": "not a setting of this service",
    }
    http.record_failure(h, "triton_mc_t100", "RuntimeError: Triton died")
    table = mc_table(h)
    assert "| mcserve `/predict/uncertainty` | 3,000 | 40.00 | 0.30 | - |" in table
    assert "| MC floor | 4,000 | n/a | 0.40 | 0.75 |" in table
    assert "| Triton (PyTriton) | could not run" in table
    assert "100.0 µs per image" in table and "on ÷ off 1.25" in table and "not a setting of this service" in table
    assert "Triton (PyTriton), MC T=100 could not run**: `RuntimeError: Triton died`" in http_table(h)
    failed = mc_table({"uncertainty_t100_batch_ab_error": "RuntimeError: no start", "mc_kernel_error": "x"})
    assert "could not run: `RuntimeError: no start`" in failed and "not measured (x)" in failed
    assert mc_table({}) == "_HTTP benchmark not run_"


def test_mc_rounds_ratios_are_per_round_against_that_rounds_best_peer_and_their_median() -> None:
    from bench import mcrounds

    rps = {
        "uncertainty_t100": [2000.0, 2500.0, 2200.0],
        "mc_floor": [3000.0, 2500.0, 0.0],  # a round whose floor failed (0) has no floor ratio
        "litserve_mc_t100": [400.0, 500.0, 450.0],
        "torchserve_mc_t100": [420.0, 380.0, 500.0],
        "triton_mc_t100": [300.0, 390.0, 410.0],
    }
    out = mcrounds.summarise(rps)
    assert out["mc_rounds_vs_best_peer_c64"] == [2000 / 420, 2500 / 500, 2200 / 500]
    assert out["mc_rounds_vs_best_peer_c64_median"] == 2000 / 420  # the middle of 4.76, 5.0, 4.4
    assert (
        out["mc_rounds_vs_floor_c64"] == [2000 / 3000, 1.0]
        and out["mc_rounds_vs_floor_c64_median"] == (2000 / 3000 + 1.0) / 2
    )
    assert out["mc_rounds_rps_c64_median"] == 2200.0 and out["mc_rounds_error"] is None


def test_mc_rounds_without_peers_still_give_the_floor_ratios() -> None:
    from bench import mcrounds

    out = mcrounds.summarise({"uncertainty_t100": [2000.0, 2400.0], "mc_floor": [2500.0, 3000.0]})
    assert out["mc_rounds_vs_best_peer_c64"] == [] and out["mc_rounds_vs_best_peer_c64_median"] is None
    assert out["mc_rounds_vs_floor_c64"] == [0.8, 0.8] and out["mc_rounds_vs_floor_c64_median"] == 0.8
