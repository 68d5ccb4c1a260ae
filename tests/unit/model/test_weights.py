from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.network import DESDnet
from model.weights import (
    CENTER_KEY,
    FORMAT,
    Calibration,
    WeightsError,
    load_weights,
    read_metadata,
    save_weights,
    store_as,
)
from tests.support.data import TINY


def saved(path: Path, config=TINY, center_size: int | None = None) -> tuple[DESDnet, Path]:  # noqa: ANN001
    torch.manual_seed(1)
    model = DESDnet(config).eval()
    center = torch.arange(center_size or config.widths[3], dtype=torch.float32)
    calibration = Calibration.from_scores(torch.linspace(0.01, 0.05, 40))
    save_weights(path, model, center, 0.75, calibration, {"epochs": 3, "file_list_sha256": "ab" * 32})
    return model, path


def test_round_trip(tmp_path: Path) -> None:
    model, path = saved(tmp_path / "w.safetensors")
    loaded = load_weights(path, expect=TINY)
    assert loaded.config == TINY and loaded.path == path
    assert loaded.radius == 0.75
    assert torch.equal(loaded.center, torch.arange(TINY.widths[3], dtype=torch.float32))
    assert loaded.training == {"epochs": 3, "file_list_sha256": "ab" * 32}
    assert loaded.calibration == Calibration.from_scores(torch.linspace(0.01, 0.05, 40))
    assert not loaded.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    clip = torch.rand(1, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.model(clip).image, model(clip).image)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers
    assert read_metadata(path)["format"] == FORMAT


def test_weights_without_a_centre(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, DESDnet(TINY), None, 0.0, Calibration(), {})
    assert load_weights(path).center is None


def test_calibration_normalises_scores() -> None:
    scores = torch.exp(torch.linspace(-5, -3, 101))
    cal = Calibration.from_scores(scores)
    assert cal.count == 101
    assert cal.log_mean == pytest.approx(-4.0)
    assert cal.normalize(math.exp(-4.0)) == pytest.approx(0.0, abs=1e-6)  # float32 scores: log_mean is -4 to ~1e-9
    assert cal.normalize(math.exp(-4.0 + cal.log_std)) == pytest.approx(1.0)
    # The default threshold lies 0.5 above the largest normal score seen.
    assert cal.threshold == pytest.approx(cal.normalize(float(scores.max())) + 0.5, abs=1e-3)
    assert cal.quantiles["p50"] == pytest.approx(math.exp(-4.0), rel=1e-6)
    assert cal.quantiles["max"] == pytest.approx(math.exp(-3.0), rel=1e-6)


# ---- bad weights: one WeightsError naming the file and the problem -----------------------------


def test_weights_of_another_configuration(tmp_path: Path) -> None:
    _, path = saved(tmp_path / "w.safetensors")
    other = TINY.with_(base_width=8, patch_stride=4)
    with pytest.raises(WeightsError, match="weights are for another configuration") as info:
        load_weights(path, expect=other)
    message = str(info.value)
    assert str(path) in message
    assert "base_width (expected 8, file has 4)" in message
    assert "patch_stride (expected 4, file has 2)" in message


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file") as info:
        load_weights(tmp_path / "absent.safetensors")
    assert str(tmp_path / "absent.safetensors") in str(info.value)


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "pickle"])
def test_corrupt_weights_file(tmp_path: Path, kind: str) -> None:
    _, good = saved(tmp_path / "good.safetensors")
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    content = {
        "empty": b"",
        "text": b"this is not a weights file\n" * 10,
        "truncated": data[: len(data) // 2],
        "pickle": b"\x80\x04\x95" + bytes(64),  # a torch.save / pickle file under the wrong name
    }[kind]
    bad.write_bytes(content)
    with pytest.raises(WeightsError, match="not a readable safetensors file") as info:
        load_weights(bad)
    assert str(bad) in str(info.value)


def test_safetensors_that_is_not_desdnet(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="not a DESDnet weights file") as info:
        load_weights(path)
    assert str(path) in str(info.value)


def test_metadata_with_an_invalid_configuration(tmp_path: Path) -> None:
    _, good = saved(tmp_path / "good.safetensors")
    metadata = read_metadata(good)
    metadata["config"] = json.dumps({**json.loads(metadata["config"]), "image_size": 30})
    path = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(path), metadata=metadata)
    with pytest.raises(WeightsError, match="invalid configuration in metadata") as info:
        load_weights(path)
    assert str(path) in str(info.value) and "multiple of 8" in str(info.value)


def test_tensors_that_do_not_match_the_configuration(tmp_path: Path) -> None:
    """Metadata says TINY (width 4), the tensors are of a width-8 network."""
    _, good = saved(tmp_path / "good.safetensors")
    wide = DESDnet(TINY.with_(base_width=8)).state_dict()
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in wide.items()}, str(path), metadata=read_metadata(good))
    with pytest.raises(WeightsError, match="tensors do not match its configuration") as info:
        load_weights(path)
    message = str(info.value)
    assert str(path) in message and "of other shapes" in message


def test_missing_and_unexpected_tensors(tmp_path: Path) -> None:
    _, good = saved(tmp_path / "good.safetensors")
    tensors = load_file(str(good))
    del tensors["decoder.head.6.weight"]
    tensors["extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=read_metadata(good))
    with pytest.raises(WeightsError, match="tensors do not match") as info:
        load_weights(path)
    message = str(info.value)
    assert "missing 1 tensors (e.g. decoder.head.6.weight)" in message
    assert "1 unexpected tensors (e.g. extra.weight)" in message


def test_centre_of_the_wrong_size(tmp_path: Path) -> None:
    _, path = saved(tmp_path / "w.safetensors", center_size=TINY.widths[3] + 1)
    with pytest.raises(WeightsError, match="tensors do not match") as info:
        load_weights(path)
    assert CENTER_KEY in str(info.value) and str(path) in str(info.value)


def test_invalid_calibration_metadata(tmp_path: Path) -> None:
    _, good = saved(tmp_path / "good.safetensors")
    metadata = read_metadata(good)
    metadata["calibration"] = json.dumps({"count": 3, "bogus": 1})
    path = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(path), metadata=metadata)
    with pytest.raises(WeightsError, match="invalid metadata") as info:
        load_weights(path)
    assert str(path) in str(info.value)


def test_fp16_storage_halves_the_file_and_loads_as_fp32(tmp_path: Path) -> None:
    model, path = saved(tmp_path / "w.safetensors", config=TINY.with_(base_width=16))
    half = tmp_path / "w.fp16.safetensors"
    store_as(path, half)
    assert half.stat().st_size < 0.55 * path.stat().st_size
    assert read_metadata(half)["storage_dtype"] == "float16"
    assert read_metadata(half)["config"] == read_metadata(path)["config"]
    loaded = load_weights(half)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.center is not None and loaded.center.dtype == torch.float32
    for name, value in model.state_dict().items():
        got = loaded.model.state_dict()[name]
        if value.is_floating_point():
            torch.testing.assert_close(got, value, rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(got, value), name


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_saved_files_get_the_mode_of_a_normal_file(tmp_path: Path, umask: int) -> None:
    # safetensors' save_file makes 0600 files: a container running as another user could not read them.
    expected = 0o666 & ~umask
    old = os.umask(umask)
    try:
        _, path = saved(tmp_path / "w.safetensors")
        half = tmp_path / "sub" / "w.fp16.safetensors"
        store_as(path, half)
        stale = tmp_path / f".w.safetensors.{os.getpid()}.tmp"  # model.files.write_atomically's temp name
        stale.write_bytes(b"left by a crashed save")
        stale.chmod(0o600)
        saved(tmp_path / "w.safetensors")  # over a stale temp file of mode 0600
        plain = tmp_path / "plain"
        with open(plain, "w"):
            pass
    finally:
        os.umask(old)
    assert plain.stat().st_mode & 0o777 == expected
    for written in (path, half):
        assert written.stat().st_mode & 0o777 == expected, (written, oct(written.stat().st_mode))
    assert load_weights(half).config == TINY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "sub", "w.safetensors"]
