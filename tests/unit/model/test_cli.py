"""`vad info / train / evaluate / recalibrate` through `service.cli.main`, in process."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.network import DESDnet
from model.paths import DEFAULT_WEIGHTS
from model.weights import load_weights, read_metadata
from service.cli import main
from tests.support.data import TINY
from tests.support.training import TrainedRun

TINY_ARGS = ["--image-size", "32", "--width", "4"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_paper(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", "--config", "paper"], capsys)
    assert code == 0
    params = re.search(r"parameters: ([\d.]+) M \(([\d.]+) M without", out)
    flops = re.search(r"GFLOP per frame: ([\d.]+) \(([\d.]+) without", out)
    assert params and flops, out
    assert float(params[1]) == pytest.approx(18.47, abs=0.01)
    assert float(flops[1]) == pytest.approx(133.1, abs=0.1)
    assert float(flops[2]) == pytest.approx(106.3, abs=0.1)


def test_evaluate_json_and_plots(trained: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plots = tmp_path / "plots"
    code, out, err = run(["evaluate", "--weights", str(trained.weights), "--data", str(trained.data),
                          "--json", "--plots", str(plots)], capsys)
    assert code == 0, err

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    report = json.loads(out, parse_constant=refuse)  # stdout is the JSON document and nothing else
    assert report["paper"]["micro_auc"] > 0.9 and report["causal"]["micro_auc"] > 0.9
    assert report["frames_scored"] == 72 and report["weights"] == str(trained.weights)
    assert sorted(Path(p).name for p in report["plots"]) == ["01.png", "02.png"]
    for name in ("01.png", "02.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_evaluate_table(trained: TrainedRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["evaluate", "--weights", str(trained.weights), "--data", str(trained.data),
                        "--quiet"], capsys)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert {"paper", "causal", "causal_unsmoothed"} <= set(rows)
    paper_auc = float(rows["paper"].split()[1].rstrip("%"))
    assert paper_auc > 90


def test_train_command(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "w.safetensors"
    code, out, err = run(["train", "--data", str(synthetic_root), "--output", str(out_path), *TINY_ARGS,
                          "--epochs", "1", "--max-clips", "8", "--quiet"], capsys)
    assert code == 0, err
    assert f"wrote {out_path} after 1 epochs" in out
    weights = load_weights(out_path)
    assert (weights.config.image_size, weights.config.base_width, weights.config.channels) == (32, 4, 1)
    assert weights.training["command"].startswith("vad ")
    assert (tmp_path / "w.ckpt" / "last.pt").is_file()  # default checkpoint folder


# ---- plain footage: vad train --data video --init, vad recalibrate --data video ----------------


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.unit.model.test_footage import write_avi

    return write_avi(tmp_path_factory.mktemp("scene") / "scene.avi", 120, seed=5)


def test_a_scene_model_from_a_video_file_then_recalibrated(
    trained: TrainedRun, scene_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "scene.safetensors"
    code, out, err = run(["train", "--data", str(scene_video), "--init", str(trained.weights), "--output",
                          str(out_path), "--epochs", "1", "--max-clips", "8", "--quiet"], capsys)
    assert code == 0, err
    assert f"wrote {out_path} after 1 epochs" in out
    assert "calibration on 46 held-out clips (scene.avi[70:120])" in out
    weights = load_weights(out_path)
    assert weights.config == trained.config and weights.training["init_weights"]["path"] == str(trained.weights)
    assert weights.training["train_config"]["epochs"] == 1

    again = tmp_path / "again.safetensors"
    code, out, err = run(["recalibrate", "--weights", str(out_path), "--data", str(scene_video), "--output",
                          str(again), "--quiet"], capsys)
    assert code == 0, err
    assert "scored the tail held out in training, scene.avi[70:120]; 50 frames" in out
    assert load_weights(again).calibration == weights.calibration


def test_plain_footage_fine_tunes_the_shipped_weights_by_default(
    scene_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --init: the shipped weights are the starting point, with their objective (no reverse erasure)."""
    out_path = tmp_path / "scene.safetensors"
    code, out, err = run(["train", "--data", str(scene_video), "--output", str(out_path), "--epochs", "1",
                          "--max-clips", "4", "--quiet"], capsys)
    assert code == 0, err
    weights, shipped = load_weights(out_path), load_weights(DEFAULT_WEIGHTS)
    assert weights.config == shipped.config
    assert weights.training["init_weights"]["path"] == str(DEFAULT_WEIGHTS)
    assert weights.training["train_config"]["erasure"] is False  # as the shipped weights were trained


def test_init_none_trains_from_scratch(scene_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "scratch.safetensors"
    code, _, err = run(["train", "--data", str(scene_video), "--init", "none", *TINY_ARGS, "--output",
                        str(out_path), "--epochs", "1", "--max-clips", "4", "--quiet"], capsys)
    assert code == 0, err
    weights = load_weights(out_path)
    assert weights.training["init_weights"] is None and weights.training["train_config"]["erasure"] is True
    assert weights.training["epochs"] == 1


def test_network_flags_may_repeat_the_initial_network_but_not_change_it(
    trained: TrainedRun, scene_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = ["train", "--data", str(scene_video), "--init", str(trained.weights), *TINY_ARGS, "--output",
            str(tmp_path / "w.safetensors"), "--epochs", "1", "--max-clips", "4", "--quiet"]
    code, _, err = run(same, capsys)
    assert code == 0, err
    for flags, shown in ((["--channels", "3"], "differs in channels (3 asked, 1 in the weights);"),
                         (["--config", "paper"], "differs in channels (3 asked, 1 in the weights);")):
        code, _, err = run([*same, *flags], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert shown in err and f"with --init {trained.weights}" in err and "--init none" in err, err
    # The default starting point of plain footage is the shipped lite network: --image-size 32 conflicts.
    code, _, err = run(["train", "--data", str(scene_video), "--image-size", "32", "--output",
                        str(tmp_path / "x.safetensors")], capsys)
    assert code == 2 and f"--image-size conflicts with --init {DEFAULT_WEIGHTS}" in err, err


# ---- bad input: exit status 2 and one line on stderr naming the file and the problem ----------


def broken(kind: str, synthetic_root: Path, tmp: Path) -> tuple[list[str], Path, str]:
    """-> (argv, path the message must name, words it must contain)."""
    weights_ok = tmp / "ok.safetensors"
    if kind == "missing dataset":
        return train_args(tmp / "absent", tmp), tmp / "absent", "no such dataset folder"
    if kind == "empty dataset":
        (tmp / "empty").mkdir()
        return train_args(tmp / "empty", tmp), tmp / "empty" / "training", "no such folder"
    if kind == "no videos":
        (tmp / "novid" / "training" / "frames").mkdir(parents=True)
        return train_args(tmp / "novid", tmp), tmp / "novid" / "training", "no videos found"
    root = Path(shutil.copytree(synthetic_root, tmp / "d"))
    if kind == "corrupt frame":
        frame = root / "training" / "frames" / "01" / "012.jpg"
        frame.write_bytes(b"\xff\xd8 truncated")
        return train_args(root, tmp), frame, "cannot decode this image"
    if kind == "short video":
        folder = root / "training" / "frames" / "02"
        for p in sorted(folder.iterdir())[3:]:
            p.unlink()
        return train_args(root, tmp), folder, "3 frames, fewer than the 5"
    if kind == "footage too short":
        from tests.unit.model.test_footage import write_avi

        video = write_avi(tmp / "short.avi", 60)
        return train_args(video, tmp) + ["--init", "none"], video, "60 frames in all, too few to train on"
    if kind == "not a video file":
        text = tmp / "notes.txt"
        text.write_text("hello")
        return train_args(text, tmp), text, "not a video file"
    if kind == "missing init weights":
        return train_args(root, tmp) + ["--init", str(tmp / "nope.safetensors")], tmp / "nope.safetensors", \
            "no such weights file"
    if kind == "resume without checkpoint":
        return train_args(root, tmp) + ["--resume"], tmp / "w.ckpt" / "last.pt", "no checkpoint"

    torch.manual_seed(0)
    from model.weights import Calibration, save_weights

    save_weights(weights_ok, DESDnet(TINY), None, 0.0, Calibration(), {})
    if kind == "labels mismatch":
        truth = root / "testing" / "ground_truth.json"
        table = json.loads(truth.read_text())
        table["videos"]["01"]["frames"] = 41
        truth.write_text(json.dumps(table))
        return eval_args(weights_ok, root), truth, "has 40 frames but the labels declare 41"
    if kind == "missing test split":
        shutil.rmtree(root / "testing")
        return eval_args(weights_ok, root), root / "testing", "no such folder"
    if kind == "missing weights":
        return eval_args(tmp / "nope.safetensors", root), tmp / "nope.safetensors", "no such weights file"
    if kind == "corrupt weights":
        bad = tmp / "bad.safetensors"
        bad.write_bytes(weights_ok.read_bytes()[:300])
        return eval_args(bad, root), bad, "not a readable safetensors file"
    if kind == "mismatched tensors":
        bad = tmp / "wide.safetensors"
        wide = DESDnet(TINY.with_(base_width=8)).state_dict()
        save_file({k: v.contiguous() for k, v in wide.items()}, str(bad), metadata=read_metadata(weights_ok))
        return eval_args(bad, root), bad, "tensors do not match its configuration"
    raise AssertionError(kind)


def train_args(data: Path, tmp: Path) -> list[str]:
    return ["train", "--data", str(data), "--output", str(tmp / "w.safetensors"), *TINY_ARGS,
            "--epochs", "1", "--max-clips", "4", "--quiet"]


def eval_args(weights: Path, data: Path) -> list[str]:
    return ["evaluate", "--weights", str(weights), "--data", str(data), "--quiet"]


KINDS = [
    "missing dataset", "empty dataset", "no videos", "corrupt frame", "short video",
    "resume without checkpoint", "footage too short", "not a video file", "missing init weights", "labels mismatch", "missing test split", "missing weights",
    "corrupt weights", "mismatched tensors",
]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_gives_one_clear_error(
    kind: str, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, path, words = broken(kind, synthetic_root, tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert err.startswith(f"vad {argv[0]}: error: ") and err.count("\n") == 1, err
    assert str(path) in err and words in err, err
    assert "Traceback" not in err
