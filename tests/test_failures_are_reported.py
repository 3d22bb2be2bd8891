"""Failures are reported, never silent: bad values are refused before any work or file, non-finite
outputs are never scored, writes are atomic (a full disk, a failed write, a killed build leave no
partial file), Ctrl-C is one line saying what was kept, and every message names the flag, file or
line at fault. One test per behaviour, each case a parametrised instance (the "item" comments number
the cases of the new-user probe that found them, issue 28). Tiny generated videos and models."""
from __future__ import annotations

import copy
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dvflnet import interrupt
from dvflnet.cli import main
from dvflnet.data.synthetic import generate_dataset
from dvflnet.engine import DEFAULTS, ConfigError, run_training
from dvflnet.models import CheckpointError, create_model, load_checkpoint
from helpers import tiny_run_config

CLASSES = ("move_left", "move_up")
TINY = {"embed_dim": 8, "depths": [1, 1, 1, 1]}
DVFLNET = [sys.executable, "-m", "dvflnet"]


def _config(videos, output, **model_kwargs) -> dict:
    return tiny_run_config(videos, output, len(CLASSES), data=dict(labels_csv=videos.labels_csv, num_frames=8),
                           model=dict(kwargs={**TINY, **model_kwargs}),
                           train=dict(epochs=1, warmup_epochs=0, batch_size=2, eval_every=0, mixup=False),
                           eval=dict(views=[[1, 1]], batch_size=2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Videos, a trained tiny model, and one with a 2-frame (tubelet) stem, as the trainer writes them."""
    root = tmp_path_factory.mktemp("probe")
    videos = generate_dataset(root / "data", train_per_class=2, val_per_class=1, num_frames=8, size=32, classes=CLASSES, seed=4)
    plain = run_training(_config(videos, root / "plain")).last
    tubelet = run_training(_config(videos, root / "tubelet", tubelet_size=2)).last
    val = [os.path.join(videos.root, line.split(",")[0]) for line in open(videos.val_csv).read().split()]
    return {"videos": videos, "plain": plain, "tubelet": tubelet, "val": val, "root": root}


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# -- 1-7: silent wrong results ------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["plain", "tubelet"])
def test_visualize_maps_every_frame_whatever_the_stem(runs, run, tmp_path, capsys):  # item 1
    from PIL import Image

    assert main(["visualize", "--checkpoint", runs[run], runs["val"][0], "-o", str(tmp_path)]) == 0
    gif = Image.open(next(tmp_path.glob("*.gif")))
    assert gif.n_frames == 8  # every video frame, the 4 temporal maps of the tubelet stem spread over them
    assert "8 frames x 4 layers" in capsys.readouterr().out


@pytest.mark.parametrize("change,named", [
    (lambda c: c["train"].update(base_lr=0.05), "train.base_lr"),
    (lambda c: c["model"]["kwargs"].update(embed_dim=16), "model.kwargs.embed_dim"),
], ids=["base_lr", "embed_dim"])
def test_a_reused_grid_cell_must_match_its_settings(runs, tmp_path, change, named):  # item 2
    from dvflnet.experiments.grid import run_cell

    cfg = _config(runs["videos"], tmp_path / "unused")
    cfg["teacher"].update(name="vfl_net_nano", checkpoint=runs["plain"], kwargs=dict(TINY))
    first = run_cell(cfg, 0.5, 4.0, str(tmp_path / "cell"))
    assert run_cell(cfg, 0.5, 4.0, str(tmp_path / "cell")) == first  # same settings: read back
    changed = copy.deepcopy(cfg)
    change(changed)
    with pytest.raises(ConfigError, match=f"other settings .*{named}"):
        run_cell(changed, 0.5, 4.0, str(tmp_path / "cell"))


@pytest.fixture(scope="module")
def nan_checkpoint(runs):
    state = torch.load(runs["plain"], weights_only=True)
    state["model"]["head.bias"][:] = float("nan")
    path = str(runs["root"] / "nan.pt")
    torch.save(state, path)
    return path


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_non_finite_outputs_are_reported_never_scored(runs, nan_checkpoint, tmp_path, capsys, command):  # item 3
    if command == "predict":
        assert main(["predict", "--checkpoint", nan_checkpoint, "--json", *runs["val"]]) == 1
        results = _strict_json(capsys.readouterr().out)
        assert all("not finite" in r["error"] and "top5" not in r for r in results)
    else:
        config = tmp_path / "run.yaml"
        config.write_text(json.dumps(_config(runs["videos"], tmp_path / "eval")))
        assert main(["evaluate", "--config", str(config), "--checkpoint", nan_checkpoint]) == 2
        err = capsys.readouterr().err
        assert "not finite (NaN or inf) for 2 of 2 videos" in err and "nothing was scored" in err
        assert not (tmp_path / "eval" / "eval_1x1.json").exists()


@pytest.mark.parametrize("case,key", [
    (lambda c: c["data"].update(size=64, test_short_side=32), "data.test_short_side: expected at least data.size"),
    (lambda c: c["train"].update(eval_views=[1, 2], eval_every=1), r"train.eval_views: expected \[clips >= 1, crops 1 or 3\]"),
    (lambda c: c["data"].update(size=48, test_short_side=48), "data.size: expected a multiple of 32"),
    ("labels", "data.labels_csv: .* names 3 classes, data.num_classes is 2"),
    (lambda c: c["model"]["kwargs"].update(embed_dim=0), "model: embed_dim: expected a positive integer"),
    (lambda c: c["model"].update(drop_path_rate=-0.5), "model.drop_path_rate"),
    (lambda c: c["train"].update(base_lr=float("nan")), "train.base_lr: expected a finite number"),
], ids=["test-crop-below-size", "eval-crops", "size-vs-stride", "labels-count", "embed-dim", "drop-path", "nan"])
def test_values_and_relations_are_checked_before_any_work_or_file(runs, tmp_path, case, key):  # items 5, 8
    cfg = _config(runs["videos"], tmp_path / "run")
    if case == "labels":
        labels = tmp_path / "labels.csv"
        labels.write_text("0,a\n1,b\n2,c\n")
        cfg["data"]["labels_csv"] = str(labels)
    else:
        case(cfg)
    with pytest.raises(ConfigError, match=key):
        run_training(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"num_classes": -1}, "num_classes: expected an integer >= 0"),
    ({"drop_path_rate": -0.5}, r"drop_path_rate: expected a value in \[0, 1\)"),
    ({"drop_path_rate": 1.5}, r"drop_path_rate: expected a value in \[0, 1\)"),
    ({"embed_dim": 0}, "embed_dim: expected a positive integer"),
], ids=["classes", "drop-path-negative", "drop-path-above-1", "embed-dim"])
def test_the_python_api_checks_what_the_config_checks(kwargs, message):  # item 20
    with pytest.raises(ValueError, match=message):
        create_model("vfl_net_nano", **kwargs)


def test_an_empty_batch_is_a_clear_error():  # item 20
    model = create_model("vfl_net_nano", num_classes=3, **TINY)
    with pytest.raises(ValueError, match=r"x: expected at least one clip"):
        model(torch.zeros(0, 8, 3, 32, 32))


@pytest.mark.parametrize("labels", ["relative", "missing"])
def test_class_names_follow_the_run_or_their_loss_is_said(runs, tmp_path, monkeypatch, labels):  # item 6
    monkeypatch.chdir(runs["videos"].root)
    cfg = _config(runs["videos"], tmp_path / "run")
    cfg["data"]["labels_csv"] = "labels.csv"  # relative to where training runs
    cfg["train"]["eval_every"] = 0
    checkpoint = run_training(cfg).last
    saved = json.load(open(tmp_path / "run" / "config.json"))
    assert os.path.isabs(saved["data"]["labels_csv"]) and os.path.isabs(saved["data"]["root"])
    monkeypatch.chdir(tmp_path)
    from dvflnet.tools.predict import Predictor

    if labels == "relative":
        assert Predictor.from_checkpoint(checkpoint).class_names == list(CLASSES)
    else:
        saved["data"]["labels_csv"] = str(tmp_path / "gone.csv")
        state = torch.load(checkpoint, weights_only=True)
        state["config"] = saved
        torch.save(state, tmp_path / "moved.pt")
        with pytest.warns(UserWarning, match="class names not loaded .*gone.csv.*shown as numbers"):
            assert Predictor.from_checkpoint(str(tmp_path / "moved.pt")).class_names is None


def test_a_nul_byte_in_a_labels_path_or_file_is_refused(runs, tmp_path):  # item 6
    from dvflnet.data import AnnotationError, read_class_names
    from dvflnet.engine.config import merge_config

    with pytest.raises(ConfigError, match="data.labels_csv: expected a string without NUL bytes"):
        merge_config(copy.deepcopy(DEFAULTS), {"data": {"labels_csv": "labels\x00.csv"}}, "run.json")
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"0,move_left\n1,move\x00up\n")
    with pytest.raises(AnnotationError, match="labels.csv:2: a NUL byte"):
        read_class_names(str(labels))


def test_predict_model_must_match_the_checkpoint(runs, capsys):  # item 7
    assert main(["predict", "--checkpoint", runs["plain"], "--model", "video_focalnet_base", runs["val"][0]]) == 2
    assert "--model video_focalnet_base: " in capsys.readouterr().err


# -- 8-12: errors that come after work, or lose it ------------------------------------------------------


@pytest.mark.parametrize("alphas,message", [
    ([1.5], r"alpha 1.5, T 5: kd.alpha: expected a value in \[0.0, 1.0\]"),
    ([float("nan")], "kd.alpha: expected a finite number"),
    ([0.3, 0.3], "--alphas: 0.3 given more than once"),
], ids=["above-1", "nan", "duplicates"])
def test_grid_values_are_checked_before_the_teacher_cache(runs, tmp_path, alphas, message):  # item 9
    from dvflnet.experiments.grid import run_grid

    cfg = _config(runs["videos"], tmp_path / "unused")
    cfg["teacher"].update(name="vfl_net_nano", checkpoint=runs["plain"], kwargs=dict(TINY))
    with pytest.raises(ConfigError, match=message):
        run_grid(cfg, str(tmp_path / "grid"), alphas, [5.0])
    assert not (tmp_path / "grid").exists()


@pytest.mark.parametrize("args,message", [
    (["--size", "0"], "size: expected a multiple of 16"),
    (["--size", "-16"], "size: expected a multiple of 16"),
    (["--size", "40"], "size: expected a multiple of 16"),
    (["--frames", "1"], "--frames: expected an integer >= 2"),
    ("existing", "already exist; refusing to overwrite them"),
], ids=["size-0", "size-negative", "size-40", "frames-1", "existing-csvs"])
def test_generate_data_checks_first_and_never_overwrites(tmp_path, capsys, args, message):  # items 10, 18
    root = tmp_path / "data"
    if args == "existing":
        root.mkdir()
        (root / "train.csv").write_text("mine.mp4,0\n")
        args = []
    assert main(["generate-data", str(root), "--train-per-class", "1", "--val-per-class", "1", "--frames", "4", "--size", "32",
                 *args]) == 2
    assert message in capsys.readouterr().err
    if (root / "train.csv").exists():
        assert (root / "train.csv").read_text() == "mine.mp4,0\n" and not (root / "videos").exists()
        assert main(["generate-data", str(root), "--train-per-class", "1", "--val-per-class", "1", "--frames", "4", "--size", "32",
                     "--classes", "move_left", "--overwrite"]) == 0
    else:
        assert not root.exists()


def test_predict_reports_a_bad_entry_and_scores_the_rest(runs, tmp_path, capsys):  # item 11
    empty = tmp_path / "x.mp4"
    empty.mkdir()
    assert main(["predict", "--checkpoint", runs["plain"], "--json", str(empty), runs["val"][0], str(tmp_path / "no.csv")]) == 1
    results = _strict_json(capsys.readouterr().out)
    assert [("error" in r) for r in results] == [True, False, True]
    assert "a folder with no video files" in results[0]["error"] and "no such file" in results[2]["error"]


def _interrupt(command, wait_for: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(DVFLNET + command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen, start = "", time.monotonic()
    stream = process.stderr if wait_for.startswith("stderr:") else process.stdout
    while wait_for.split(":", 1)[1] not in seen and time.monotonic() - start < 120:
        seen += stream.readline()
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, (seen if stream is process.stdout else "") + out,
                                       (seen if stream is process.stderr else "") + err)


@pytest.mark.parametrize("command", ["train", "cache-teacher", "predict"])
def test_ctrl_c_is_one_line_saying_what_was_kept(runs, tmp_path, command):  # item 12
    cfg = _config(runs["videos"], tmp_path / "run")
    cfg["train"].update(epochs=500, log_every=1)
    cfg["teacher"].update(name="vfl_net_nano", checkpoint=runs["plain"], kwargs=dict(TINY))
    cfg["kd"]["teacher_cache"] = str(tmp_path / "cache")
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(cfg))
    if command == "train":
        done = _interrupt(["train", "--config", str(config)], "stdout:epoch 2/", tmp_path)
        said = "the same command resumes from the newest checkpoint"
    elif command == "cache-teacher":
        done = _interrupt(["cache-teacher", "--config", str(config)], "stdout:epoch 2/", tmp_path)
        said = "the finished chunks are kept in"
    else:
        videos = (tmp_path / "many.csv")
        videos.write_text("".join(f"{runs['val'][0]}\n" for _ in range(400)))
        done = _interrupt(["predict", "--checkpoint", runs["plain"], "--window-seconds", "0.2", str(videos)],
                          "stderr:views", tmp_path)
        said = "videos scored before it are printed above"
        assert done.stdout.count(os.path.basename(runs["val"][0])) >= 1  # the partial results
    assert done.returncode == 130
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and f"dvflnet {command}: interrupted; " in lines[-1] and said in lines[-1]
    assert not list(tmp_path.rglob(".tmp-*")) and not list(tmp_path.rglob("*.lock"))


# -- 13-16: writes ---------------------------------------------------------------------------------------


def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path):  # items 13, 14
    from dvflnet.atomic import write_atomic

    def full_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "eval_1x1.json").write_text("{}")
    with pytest.raises(OSError, match=r"eval_1x1.json: cannot write \(No space left on device\)"):
        write_atomic(str(tmp_path / "eval_1x1.json"), full_disk)
    assert sorted(os.listdir(tmp_path)) == ["eval_1x1.json"] and (tmp_path / "eval_1x1.json").read_text() == "{}"


def _write_with(writer: str, path: str) -> None:
    from dvflnet import atomic

    if writer == "write_atomic":
        atomic.write_atomic(path, lambda f: f.write(b"whole"))
    elif writer == "write_through_path":
        atomic.write_through_path(path, lambda tmp: open(tmp, "wb").write(b"whole"))
    elif writer == "write_set":
        atomic.write_set({path: b"whole"})
    else:
        atomic.check_writable(path)


@pytest.mark.parametrize("writer", ["write_atomic", "write_through_path", "write_set", "check_writable"])
def test_a_ctrl_c_as_the_temporary_file_is_made_leaves_none(tmp_path, monkeypatch, writer):
    """A Ctrl-C that arrives right after mkstemp made the temporary file (before any cleanup could
    know of it; a CI run's interrupted teacher cache once kept one): the write completes, then the
    interrupt is raised, and no temporary file is left."""
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_ctrl_c(*args, **kwargs):
        made = real_mkstemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return made

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_ctrl_c)
    path = tmp_path / "chunk.pt"
    with pytest.raises(KeyboardInterrupt):
        _write_with(writer, str(path))
    assert sorted(os.listdir(tmp_path)) == ([] if writer == "check_writable" else ["chunk.pt"])
    if writer != "check_writable":
        assert path.read_bytes() == b"whole"


CHILD_SCRIPT = """
import sys, time
from dvflnet import interrupt

def child():
    interrupt.ignore_in_child()
    time.sleep(30)

if __name__ == "__main__":
    import multiprocessing
    process = multiprocessing.get_context("spawn").Process(target=child)
    try:
        with interrupt.children_start_blocked():
            process.start()
        print("started", flush=True)
        process.join()
    except KeyboardInterrupt:
        process.terminate()
        process.join()
        sys.exit("interrupted")
"""


def test_a_spawned_child_started_blocked_leaves_ctrl_c_to_its_parent(tmp_path):
    """The terminal's Ctrl-C reaches the whole group, a child still importing (torch: seconds) too; the
    demo's student beside the teacher and resize's workers start so. Nothing but the parent's line."""
    script = tmp_path / "parent.py"
    script.write_text("import torch\n" + CHILD_SCRIPT)  # the child imports torch as it starts
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    assert run.stdout.readline() == "started\n"
    time.sleep(1.0)  # into the child's imports (2-3 s)
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1 and err == "interrupted\n", err


def test_a_ctrl_c_while_children_start_is_raised_once_they_have():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.children_start_blocked():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached.append(True)
    assert reached == [True]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # unblocked again


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs, filled: a real full disk (mounting needs root; elsewhere this case skips)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=4k"], capture_output=True)
        (mount / "filler").unlink()
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=4k", "count=60"], capture_output=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.parametrize("what", ["export-pt2", "export-onnx", "evaluate"])
def test_a_full_disk_is_a_clean_error_and_no_truncated_file(runs, full_disk, tmp_path, capsys, what):  # items 13, 14
    if what.startswith("export"):
        fmt = what.split("-")[1]
        out = full_disk / f"model.{fmt}"
        code = main(["export", "--checkpoint", runs["plain"], "--format", fmt, "-o", str(out)])
    else:
        cfg = _config(runs["videos"], full_disk / "eval")
        config = tmp_path / "run.yaml"
        config.write_text(json.dumps(cfg))
        os.makedirs(full_disk / "eval", exist_ok=True)
        out = full_disk / "eval" / "eval_1x1.json"
        subprocess.run(["dd", "if=/dev/zero", f"of={full_disk / 'more'}", "bs=4k"], capture_output=True)  # every block
        code = main(["evaluate", "--config", str(config), "--checkpoint", runs["plain"]])
    assert code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "No space left on device" in err
    assert not out.exists() and not list(full_disk.rglob(".tmp-*"))


def test_cache_temporary_files_of_a_killed_build_are_removed(runs, tmp_path):  # item 15
    from dvflnet.engine.teacher_cache import build_teacher_cache

    cfg = _config(runs["videos"], tmp_path / "run")
    cfg["teacher"].update(name="vfl_net_nano", checkpoint=runs["plain"], kwargs=dict(TINY))
    cfg["kd"]["teacher_cache"] = str(tmp_path / "cache")
    os.makedirs(tmp_path / "cache")
    (tmp_path / "cache" / ".tmp-abc.pt").write_bytes(b"half a chunk")
    build_teacher_cache(cfg)
    assert not list((tmp_path / "cache").glob(".tmp-*")) and list((tmp_path / "cache").glob("e0000-*.pt"))


def test_written_files_follow_the_umask(runs, tmp_path):  # item 16
    old = os.umask(0o002)
    try:
        cfg = _config(runs["videos"], tmp_path / "run")
        cfg["train"].update(eval_every=1)
        run_training(cfg)
    finally:
        os.umask(old)
    for name in ("config.json", "best.pt", "checkpoint_2.pt"):
        assert oct(os.stat(tmp_path / "run" / name).st_mode & 0o777) == oct(0o664), name


# -- 17-22: bare tracebacks and unclear messages ----------------------------------------------------------


@pytest.mark.parametrize("content,message", [
    (b"train:\n  epochs: [1\n", r"bad.yaml:3:1: not valid YAML: while parsing a flow sequence"),
    (b"a: !!python/object:os.system x\n", r"bad.yaml:1:4: not valid YAML: could not determine a constructor for the tag"),
    (b"_base_: 5\n", r"bad.yaml: _base_: expected a file name or a list of file names, got 5"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"bad.yaml: not a UTF-8 text file"),
], ids=["malformed", "python-tag", "base-int", "binary"])
def test_config_file_errors_are_one_line_naming_file_line_and_column(tmp_path, capsys, content, message):  # item 17
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err


@pytest.mark.parametrize("args,message", [
    (["--device", "tpu"], "device: 'tpu' is not a device string"),
    (["--device", "cuda"], "device: 'cuda' requested but this machine has no usable CUDA device"),
    (["--batch", "0"], "argument --batch: expected a positive number"),
    (["--classes", "-5"], "argument --classes: expected a positive number"),
], ids=["tpu", "cuda", "batch-0", "classes-negative"])
def test_flops_flags_are_checked(capsys, args, message):  # item 19
    if args[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    try:
        code = main(["flops", "vfl_net_nano", *args])
    except SystemExit as exit_:  # argparse's own one-line usage error
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("target,message", [
    ("folder", "is a folder; expected a file path to write"),
    ("/proc/dvfl-model.onnx", "/proc/dvfl-model.onnx: cannot write here"),
], ids=["folder", "unwritable"])
def test_export_to_a_place_it_cannot_write_is_named_before_the_work(runs, tmp_path, capsys, target, message):  # item 21
    out = str(tmp_path) if target == "folder" else target
    assert main(["export", "--checkpoint", runs["plain"], "--format", "onnx", "-o", out]) == 2
    assert message in capsys.readouterr().err


def test_messages_say_enough(runs, tmp_path, capsys):  # item 22
    # a state dict missing many keys: the total, not only the first ten
    state = torch.load(runs["plain"], weights_only=True)["model"]
    partial = {k: v for i, (k, v) in enumerate(state.items()) if i % 2 or k.startswith("head.")}
    missing = len(state) - len(partial)
    raw = tmp_path / "raw_state.pt"
    torch.save(partial, raw)
    model = create_model("vfl_net_nano", num_classes=2, num_frames=8, img_size=32, **TINY)
    with pytest.raises(CheckpointError, match=rf"{raw}: checkpoint does not match the model: missing {missing} \(.* and {missing - 10} more\)"):
        load_checkpoint(model, str(raw))
    # a raw state dict handed to predict is named by its path
    assert main(["predict", "--checkpoint", str(raw), "--model", "vfl_net_nano", runs["val"][0]]) == 2
    assert f"dvflnet predict: error: {raw}: " in capsys.readouterr().err  # its path, not "<state dict>"
    # a folder given as a checkpoint
    assert main(["predict", "--checkpoint", str(tmp_path), runs["val"][0]]) == 2
    assert "is a folder; expected a checkpoint file" in capsys.readouterr().err
    # --output naming a file
    afile = tmp_path / "afile"
    afile.write_text("x")
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(_config(runs["videos"], afile)))
    assert main(["train", "--config", str(config)]) == 2
    assert f"output: {afile} is a file; expected a folder" in capsys.readouterr().err
    # a 200 KB model name is not echoed whole
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "o"), "--opts", "model.name", "x" * 200_000]) == 2
    err = capsys.readouterr().err
    assert len(err) < 1000 and "(200,002 characters)" in err
    # an audio-only file
    import av
    import numpy as np

    audio = tmp_path / "audio.mp4"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    assert main(["predict", "--checkpoint", runs["plain"], "--json", str(audio)]) == 1
    assert "no video stream (audio only?)" in _strict_json(capsys.readouterr().out)[0]["error"]
