"""bench.floorab's pure parts: variant parsing and the per-round ratios (its run is a benchmark, not a test)."""

from pathlib import Path

import pytest

from bench.floorab import FLOOR, main, parse_variant, summarise


def test_variant_with_checkout_and_settings() -> None:
    v = parse_variant("thread@/tmp/other:MCSERVE_MC_PROCESS=off:MCSERVE_MC_BATCH=false", Path("/here"))
    assert v.name == "thread"
    assert v.root == Path("/tmp/other").resolve()
    assert v.settings == {"MCSERVE_MC_PROCESS": "off", "MCSERVE_MC_BATCH": "false"}
    plain = parse_variant("child", Path("/here"))
    assert (plain.root, plain.settings) == (Path("/here"), {})


@pytest.mark.parametrize("text", ["", "floor", "x:MCSERVE_MC_PROCESS", "x:=off"])
def test_bad_variants_are_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="variant"):
        parse_variant(text)


def test_ratios_per_round_and_medians() -> None:
    rps = {FLOOR: [100.0, 200.0, 100.0], "a": [80.0, 120.0, 70.0], "b": [40.0, 0.0, 70.0]}
    out = summarise(rps, ["a", "b"])
    assert out["a_vs_floor"] == [0.8, 0.6, 0.7]
    assert out["a_vs_floor_median"] == pytest.approx(0.7)
    assert out["b_vs_floor"] == [0.4, 0.7]  # the failed round (0 req/s) gives no ratio
    assert out["b_vs_a"] == [0.5, 1.0]
    assert out["b_vs_a_median"] == pytest.approx(0.75)
    assert "a_vs_a" not in out


def test_missing_artifact_is_a_clear_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--model-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "python -m training --out" in capsys.readouterr().err


def test_duplicate_names_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--variant", "a", "--variant", "a:MCSERVE_MC_BATCH=false"])
    assert "its own name" in capsys.readouterr().err
