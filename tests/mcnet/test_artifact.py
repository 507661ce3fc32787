"""Artifact format: round trip, tamper detection, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mcnet
from mcnet import ArtifactError, DropoutMLP, load_artifact, read_manifest, save_artifact


def _model(seed: int = 0) -> DropoutMLP:
    torch.manual_seed(seed)
    return DropoutMLP()


def _export(tmp_path: Path, seed: int = 0) -> tuple[Path, DropoutMLP]:
    model = _model(seed)
    out = tmp_path / "artifact"
    save_artifact(out, model, uncertainty_threshold=0.123, uncertainty_rule="test rule")
    return out, model


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    out, model = _export(tmp_path)
    loaded, manifest = load_artifact(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not loaded.training
    assert manifest["class_names"] == list(mcnet.CLASS_NAMES)
    assert manifest["uncertainty"]["threshold"] == pytest.approx(0.123)
    assert manifest["architecture"]["hidden"] == [256, 256]
    assert manifest["architecture"]["dropout"] == [0.2, 0.5]
    assert manifest["weights"]["sha256"] == mcnet.sha256_file(out / mcnet.WEIGHTS_FILE)
    x = torch.rand(4, 28, 28) * 255
    assert torch.equal(model.eval()(x), loaded(x))


def test_weights_file_is_safetensors_not_pickle(tmp_path: Path) -> None:
    out, _ = _export(tmp_path)
    raw = (out / mcnet.WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert {"fc1.weight", "fc2.weight", "fc3.weight"} <= set(header)
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol marker at the start


def test_flipped_byte_in_weights_is_refused(tmp_path: Path) -> None:
    out, _ = _export(tmp_path)
    path = out / mcnet.WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 mismatch") as info:
        load_artifact(out)
    assert str(path) in str(info.value)
    assert "python -m training" in str(info.value)


def test_edited_manifest_is_refused(tmp_path: Path) -> None:
    out, _ = _export(tmp_path)
    path = out / mcnet.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["uncertainty"]["threshold"] = 9.0
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest checksum mismatch"):
        load_artifact(out)


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    out, _ = _export(tmp_path)
    path = out / mcnet.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        read_manifest(out)


@pytest.mark.parametrize("missing", [mcnet.WEIGHTS_FILE, mcnet.MANIFEST_FILE])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    out, _ = _export(tmp_path)
    (out / missing).unlink()
    with pytest.raises(ArtifactError, match="missing") as info:
        load_artifact(out)
    assert missing in str(info.value)


def test_missing_directory_and_garbage_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist") as info:
        load_artifact(tmp_path / "nope")
    assert f"python -m training --out {tmp_path / 'nope'}`" in str(info.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / mcnet.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_artifact(tmp_path / "bad")


def test_truncated_weights_are_refused_even_with_matching_checksum(tmp_path: Path) -> None:
    """A manifest re-signed for a truncated file still fails on the safetensors parse."""
    out, _ = _export(tmp_path)
    wpath = out / mcnet.WEIGHTS_FILE
    wpath.write_bytes(wpath.read_bytes()[:100])
    mpath = out / mcnet.MANIFEST_FILE
    manifest = json.loads(mpath.read_text())
    manifest["weights"]["sha256"] = mcnet.sha256_file(wpath)
    manifest["manifest_sha256"] = mcnet.artifact.manifest_checksum(manifest)
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not valid safetensors"):
        load_artifact(out)


def test_crash_during_write_keeps_previous_artifact(tmp_path: Path) -> None:
    out, _ = _export(tmp_path, seed=1)
    before = (out / mcnet.WEIGHTS_FILE).read_bytes()
    with pytest.raises(RuntimeError, match="boom"), mcnet.atomic_directory(out) as staging:
        (staging / mcnet.WEIGHTS_FILE).write_bytes(b"half")
        raise RuntimeError("boom")
    assert (out / mcnet.WEIGHTS_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    load_artifact(out)


def test_overwrite_replaces_whole_artifact(tmp_path: Path) -> None:
    out, _ = _export(tmp_path, seed=1)
    first = read_manifest(out)["weights"]["sha256"]
    save_artifact(out, _model(2))
    assert read_manifest(out)["weights"]["sha256"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_mc_flag_turns_dropout_on_without_train_mode() -> None:
    model = _model().eval()
    x = torch.rand(8, 784) * 255
    assert torch.equal(model(x), model(x))
    torch.manual_seed(0)
    a = model(x, mc=True)
    b = model(x, mc=True)
    assert not torch.equal(a, b)
    assert not model.training


def test_published_files_are_world_readable(tmp_path: Path) -> None:
    out, _ = _export(tmp_path)
    for name in (mcnet.WEIGHTS_FILE, mcnet.MANIFEST_FILE):
        assert (out / name).stat().st_mode & 0o044 == 0o044, name
    assert out.stat().st_mode & 0o055 == 0o055
