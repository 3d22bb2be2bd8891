"""Using a trained model (issue 11): predict on videos (top-5, names, sliding windows, bad files among
good ones, JSON), export round trips through ONNX Runtime and torch.export for the model's options,
visualize's images, and plain-line logging when output is not a terminal."""
from __future__ import annotations

import glob
import importlib.util
import json
import os

import pytest
import torch

from dvflnet.cli import main
from dvflnet.data.synthetic import generate_dataset
from dvflnet.data.video import video_info
from dvflnet.engine import run_training
from dvflnet.tools.export import MissingExtraError, export_onnx, export_pt2
from dvflnet.models import VideoFocalNet
from dvflnet.tools.predict import Predictor, expand_inputs, model_from_checkpoint
from helpers import tiny_run_config

CLASSES = ("move_left", "move_right", "approach", "recede")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model after one epoch of the real trainer (its checkpoint format, its saved config)."""
    root = tmp_path_factory.mktemp("predict")
    videos = generate_dataset(root / "data", train_per_class=2, val_per_class=1, num_frames=24, size=32, classes=CLASSES, seed=2)
    cfg = tiny_run_config(videos, root / "run", len(CLASSES), data=dict(labels_csv=videos.labels_csv, num_frames=4),
                          train=dict(epochs=1, warmup_epochs=0, batch_size=4, eval_every=0, mixup=False))
    summary = run_training(cfg)
    val = [os.path.join(videos.root, line.split(",")[0]) for line in open(videos.val_csv).read().split()]
    return summary.last, videos, val


def test_predict_top5_with_names_from_the_saved_config(trained):
    checkpoint, videos, val = trained
    predictor = Predictor.from_checkpoint(checkpoint, precision="fp32")
    assert (predictor.num_frames, predictor.size, predictor.class_names) == (4, 32, list(CLASSES))
    result = predictor.predict(val[0])
    probs = [entry["prob"] for entry in result["top5"]]
    assert len(probs) == 4 and sum(probs) == pytest.approx(1.0, abs=1e-5) and probs == sorted(probs, reverse=True)
    assert {entry["name"] for entry in result["top5"]} == set(CLASSES)
    assert all(CLASSES[entry["label"]] == entry["name"] for entry in result["top5"])
    multi = Predictor.from_checkpoint(checkpoint, views=(4, 3), precision="fp32").predict(val[0])
    assert multi["views"] == "4x3" and sum(e["prob"] for e in multi["top5"]) == pytest.approx(1.0, abs=1e-5)
    # bf16 (this CPU's fast path when it has native bf16) agrees on the class
    bf16 = Predictor.from_checkpoint(checkpoint, precision="bf16").predict(val[0])
    assert bf16["top5"][0]["label"] == result["top5"][0]["label"] or abs(probs[0] - probs[1]) < 0.02


def test_sliding_windows_cover_the_video(trained):
    checkpoint, _, val = trained
    predictor = Predictor.from_checkpoint(checkpoint, precision="fp32")
    length, fps = video_info(val[0])
    windows = predictor.predict(val[0], window_seconds=0.75, stride_seconds=0.5)["windows"]
    assert windows[0]["start"] == 0 and windows[-1]["end"] == pytest.approx(length / fps)
    assert all(b["start"] <= a["end"] for a, b in zip(windows, windows[1:]))  # no gap
    assert all(w["end"] - w["start"] == pytest.approx(round(0.75 * fps) / fps) for w in windows)
    assert all(set(w) == {"start", "end", "label", "name", "prob"} for w in windows)
    whole = predictor.predict(val[0], window_seconds=100.0)["windows"]
    assert len(whole) == 1 and whole[0]["end"] == pytest.approx(length / fps)


def test_windows_must_be_finite_and_a_frame_long_and_many_are_announced(trained, capsys):
    checkpoint, _, val = trained
    for flag in ("--window-seconds", "--stride-seconds"):
        for value in ("inf", "nan", "-1", "0"):
            with pytest.raises(SystemExit):
                main(["predict", "--checkpoint", checkpoint, val[0], "--window-seconds", "1", flag, value])
            assert f"argument {flag}: expected a positive, finite number of seconds, got {value!r}" in capsys.readouterr().err
    predictor = Predictor.from_checkpoint(checkpoint, precision="fp32")
    length, fps = video_info(val[0])
    with pytest.raises(ValueError, match=r"--window-seconds: 0.01 s is shorter than one frame of this video"):
        predictor.predict(val[0], window_seconds=0.01)
    with pytest.raises(ValueError, match=r"--stride-seconds: expected a positive, finite number"):
        predictor.predict(val[0], window_seconds=1.0, stride_seconds=float("inf"))
    import dvflnet.tools.predict as predict_module

    many = predict_module.MANY_WINDOWS
    try:
        predict_module.MANY_WINDOWS = 2
        with pytest.warns(UserWarning, match=r"windows of .* one forward each; a longer --stride-seconds gives fewer"):
            windows = predictor.predict(val[0], window_seconds=1 / fps, stride_seconds=1 / fps)["windows"]
    finally:
        predict_module.MANY_WINDOWS = many
    assert len(windows) == length


def test_a_bad_file_among_good_ones_is_reported_and_the_rest_scored(trained, tmp_path, capsys):
    checkpoint, videos, val = trained
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 50)
    code = main(["predict", "--checkpoint", checkpoint, "--json", "--precision", "fp32", val[0], str(broken), val[1],
                 str(tmp_path / "missing.mp4")])
    results = json.loads(capsys.readouterr().out)
    assert code == 1 and [r["path"] for r in results] == [val[0], str(broken), val[1], str(tmp_path / "missing.mp4")]
    assert "top5" in results[0] and "top5" in results[2]
    assert "broken.mp4" in results[1]["error"] and "no such file" in results[3]["error"]
    assert set(results[0]["top5"][0]) == {"label", "name", "prob"}
    assert main(["predict", "--checkpoint", checkpoint, val[0]]) == 0
    out, err = capsys.readouterr()
    assert "1. " in out and "views" in out and ("bf16" in err or "fp32" in err)


def test_inputs_from_folders_and_csvs(trained):
    _, videos, _ = trained
    folder = sorted(expand_inputs([os.path.join(videos.root, "videos", "val")]))
    listed = sorted(expand_inputs([videos.val_csv]))
    assert len(folder) == len(CLASSES) and folder == listed


def test_a_raw_state_dict_with_model_and_classes(trained, tmp_path, capsys):
    checkpoint, videos, val = trained
    model, _, _ = model_from_checkpoint(checkpoint)
    raw = tmp_path / "raw.pt"
    torch.save(model.state_dict(), raw)
    # a raw state dict has no config: the variant and settings come from flags (size and frames default
    # to the recipe's 224 / 8, so use the run's own config for those)
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text("model:\n  kwargs: {embed_dim: 8, depths: [1, 1, 1, 1]}\ndata:\n  num_frames: 4\n  frame_interval: 1\n"
                       "  size: 32\n  test_short_side: 32\n")
    assert main(["predict", "--checkpoint", str(raw), "--config", str(run_cfg), "--classes", videos.labels_csv,
                 "--json", val[0]]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top5"][0]["name"] in CLASSES
    assert main(["predict", "--checkpoint", str(raw), "--config", str(run_cfg), "--num-classes", "7", val[0]]) == 2
    assert "its head has 4 classes, but 7 were given" in capsys.readouterr().err


OPTIONS = {
    "default": {},
    "postln-layerscale": {"use_postln": True, "use_layerscale": True, "use_postln_in_modulation": True},
    "tubelet2": {"tubelet_size": 2},
    "normalize": {"normalize_modulator": True},
}
# Every option at once: each of them takes its own path through the export, and one ONNX export costs
# 20-30 s here (the exporter's per-node work), so the round trip runs two models, not five.
EVERY_OPTION = {key: value for options in OPTIONS.values() for key, value in options.items()}
ROUND_TRIPS = {"default": {}, "every-option": EVERY_OPTION}


def _tiny(options: dict) -> VideoFocalNet:
    torch.manual_seed(0)
    return VideoFocalNet(img_size=32, embed_dim=8, depths=[1, 1, 1, 1], num_classes=5, num_frames=4,
                         drop_path_rate=0.0, **options).eval()


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_onnx_export_round_trips_through_onnx_runtime(tmp_path, name):
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    import onnxruntime

    model = _tiny(ROUND_TRIPS[name])
    report = export_onnx(model, str(tmp_path / "m.onnx"), frames=4, size=32)
    assert report["max_rel_err"] <= 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    clips = torch.randn(3, 4, 3, 32, 32)  # another batch size than the export's
    got = session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0]
    with torch.no_grad():
        want = model(clips)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["default", "tubelet2"])
def test_pt2_export_keeps_the_custom_ops_and_a_decomposed_twin(tmp_path, name):
    import dvfl_kernels

    if "cpu" not in dvfl_kernels.available_backends("spatial_context"):
        pytest.skip("the C++ extension is not built")
    model = _tiny(OPTIONS[name])
    model.set_backend("cpu")
    report = export_pt2(model, str(tmp_path / "m.pt2"), frames=4, size=32)
    programs = {path: torch.export.load(path) for path in (report["path"], report["decomposed_path"])}
    ops = {path: {str(n.target) for n in p.graph.nodes if n.op == "call_function"} for path, p in programs.items()}
    assert any("dvfl." in op for op in ops[report["path"]])
    assert not any("dvfl." in op for op in ops[report["decomposed_path"]])
    clips = torch.randn(3, 4, 3, 32, 32)
    with torch.no_grad():
        want = model(clips)
        for program in programs.values():
            torch.testing.assert_close(program.module()(clips), want, rtol=1e-4, atol=1e-5)


def test_export_without_the_extra_says_what_to_install(trained, tmp_path, monkeypatch, capsys):
    checkpoint, _, _ = trained
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"needs onnxruntime: pip install 'dvfl\[export\]'"):
        export_onnx(_tiny({}), str(tmp_path / "m.onnx"), frames=4, size=32)
    assert main(["export", "--checkpoint", checkpoint, "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'dvfl[export]'" in capsys.readouterr().err


def test_cli_export_pt2_from_a_training_checkpoint(trained, tmp_path, capsys):
    checkpoint, _, _ = trained
    assert main(["export", "--checkpoint", checkpoint, "--format", "pt2", "-o", str(tmp_path / "nano.pt2")]) == 0
    out = capsys.readouterr().out
    assert "clips (B, 4, 3, 32, 32), dynamic batch" in out and "max relative error" in out
    assert os.path.isfile(tmp_path / "nano.pt2") and os.path.isfile(tmp_path / "nano.decomposed.pt2")


def test_visualize_writes_a_grid_and_a_gif(trained, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    checkpoint, _, val = trained
    assert main(["visualize", "--checkpoint", checkpoint, val[0], "-o", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    stem = os.path.splitext(os.path.basename(val[0]))[0]
    png = Image.open(tmp_path / f"{stem}_modulators.png")
    rows = 1 + 2 * 4  # frames, then spatial and temporal of the 4 stages' last blocks
    assert png.size == (int(1.6 * 4 * 100), int(1.6 * rows * 100))
    gif = Image.open(tmp_path / f"{stem}_modulators.gif")
    assert gif.n_frames == 4 and gif.size == (32 * rows, 32)
    with pytest.raises(ValueError, match="no focal modulation named"):
        from dvflnet.tools.visualize import visualize

        visualize(Predictor.from_checkpoint(checkpoint), val[0], str(tmp_path), ["layers.9.blocks.0.modulation"])


def test_training_output_is_plain_lines_when_not_a_terminal(trained, tmp_path, capsys):
    checkpoint, videos, _ = trained
    cfg = json.load(open(os.path.join(os.path.dirname(checkpoint), "config.json")))
    cfg.update(output=str(tmp_path / "run"))
    cfg["train"].update(progress=True, log_every=1)
    run_training(cfg)
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    assert "epoch 1/1 step 1/2: loss" in out and "epoch 1/1 step 2/2: loss" in out
    assert glob.glob(str(tmp_path / "run" / "checkpoint_*.pt"))


def test_quantize_writes_an_int8_checkpoint_that_predict_and_the_api_load(trained, tmp_path, capsys):
    checkpoint, videos, val = trained
    out = str(tmp_path / "int8.pt")
    assert main(["quantize", "--checkpoint", checkpoint, "--calib", videos.train_csv, "--clips", "5", "-o", out]) == 0
    printed = capsys.readouterr().out
    assert "in int8, calibrated on 5 clips" in printed
    predictor = Predictor.from_checkpoint(out, precision="fp32")
    from dvflnet.models import Int8Model

    assert isinstance(predictor.model, Int8Model) and predictor.device.type == "cpu"
    float_predictor = Predictor.from_checkpoint(checkpoint, precision="fp32", device="cpu")
    int8_probs, float_probs = predictor.scores(val[0]), float_predictor.scores(val[0])
    assert (int8_probs - float_probs).abs().max() <= 0.05  # probabilities of a 4-class tiny model
    assert main(["predict", "--checkpoint", out, val[0], "--json", "--views", "2x3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results[0]["path"] == val[0] and len(results[0]["top5"]) == 4
    # evaluate scores the int8 checkpoint in int8 (its saved config, the run's val set)
    run = os.path.dirname(checkpoint)
    assert main(["evaluate", "--config", os.path.join(run, "config.json"), "--checkpoint", out]) == 0
    assert "top-1" in capsys.readouterr().out
    # the same calibration gives the same checkpoint content
    again = str(tmp_path / "again.pt")
    assert main(["quantize", "--checkpoint", checkpoint, "--calib", videos.train_csv, "--clips", "5", "-o", again]) == 0
    assert torch.load(out)["int8"] == torch.load(again)["int8"]


def test_quantize_errors_name_the_flag(trained, tmp_path, capsys):
    checkpoint, videos, _ = trained
    out = str(tmp_path / "int8.pt")
    assert main(["quantize", "--checkpoint", checkpoint, "--calib", videos.train_csv, "-o", checkpoint]) != 0
    assert "is the source checkpoint" in capsys.readouterr().err
    assert main(["quantize", "--checkpoint", checkpoint, "--calib", videos.train_csv, "--float-parts", "attention",
                 "-o", out]) != 0
    assert "parts: unknown ['attention']" in capsys.readouterr().err
    assert main(["quantize", "--checkpoint", checkpoint, "--calib", str(tmp_path / "none.csv"), "-o", out]) != 0
    assert "none.csv" in capsys.readouterr().err
    assert main(["quantize", "--checkpoint", checkpoint, "--calib", videos.train_csv, "-o", out]) == 0
    capsys.readouterr()
    assert main(["quantize", "--checkpoint", out, "--calib", videos.train_csv, "-o", str(tmp_path / "twice.pt")]) != 0
    assert "already an int8 checkpoint" in capsys.readouterr().err


def test_an_int8_checkpoint_exports_as_onnx_with_qdq_pairs_that_runtimes_run(trained, tmp_path, capsys):
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    import onnx
    import onnxruntime

    checkpoint, videos, _ = trained
    int8_path, onnx_path = str(tmp_path / "int8.pt"), str(tmp_path / "int8.onnx")
    assert main(["quantize", "--checkpoint", checkpoint, "--calib", videos.train_csv, "--clips", "4", "-o", int8_path]) == 0
    assert main(["export", "--checkpoint", int8_path, "--format", "onnx", "-o", onnx_path]) == 0
    printed = capsys.readouterr().out
    assert "MatMuls with int8 QDQ pairs; ONNX Runtime vs the in-process int8 model" in printed
    graph = onnx.load(onnx_path).graph
    kinds = [n.op_type for n in graph.node]
    # per block: f, f_temporal, h, h_temporal, proj, fc1, fc2 and the two tap levels
    assert kinds.count("QuantizeLinear") == 4 * 9 and kinds.count("DequantizeLinear") == 2 * 4 * 9
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)
    model, _, _ = model_from_checkpoint(int8_path)
    clips = torch.randn(3, 4, 3, 32, 32)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0])
    want = model(clips)
    assert (got - want).abs().max() <= 2e-2 * want.abs().max()
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        request = openvino.Core().compile_model(onnx_path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        got = torch.from_numpy(request.infer({0: clips.numpy()})[0].copy())
        assert (got - want).abs().max() <= 2e-2 * want.abs().max()
    assert main(["export", "--checkpoint", int8_path, "--format", "pt2", "-o", str(tmp_path / "x.pt2")]) != 0
    assert "an int8 checkpoint exports as onnx" in capsys.readouterr().err
