"""dvflnet resize on real files: every frame at the source rate, the shorter side N with the aspect kept
and even sizes, the folders mirrored; a corrupt source reported by path while the rest go on; a
resumed run redoing nothing finished and never counting a half-written file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dvflnet.cli import main as cli_main
from dvflnet.tools.resize import PARTIAL_PREFIX, ResizeError, resize_tree, scaled_size


def _write(path: Path, frames: int, height: int, width: int, fps: int, codec: str) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(frames)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _probe(path: Path) -> tuple[int, float, int, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, float(stream.average_rate), stream.codec_context.width, stream.codec_context.height


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    _write(src / "ClassA" / "v_ClassA_g01_c01.avi", 9, 64, 128, 25, "mpeg4")     # landscape
    _write(src / "ClassB" / "deep" / "clip.mp4", 7, 72, 48, 12, "libx264")        # portrait
    _write(src / "clip.webm", 5, 30, 40, 10, "libvpx-vp9")                         # 4:3, odd scale
    (src / "ClassA" / "notes.txt").write_text("not a video")
    return src


def test_every_frame_at_the_source_rate_short_side_n_aspect_kept(tree, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert cli_main(["resize", str(tree), str(dst), "--short-side", "32", "--workers", "2", "--no-progress"]) == 0
    assert "resize: 3 resized, 0 already done, 0 failed" in capsys.readouterr().out
    assert _probe(dst / "ClassA" / "v_ClassA_g01_c01.avi") == (9, 25.0, 64, 32)
    assert _probe(dst / "ClassB" / "deep" / "clip.mp4") == (7, 12.0, 32, 48)
    assert _probe(dst / "clip.webm") == (5, 10.0, 42, 32)  # 40 * 32 / 30 = 42.7 -> 42, even
    assert not (dst / "ClassA" / "notes.txt").exists()
    from dvflnet.data.video import read_frames

    assert tuple(read_frames(dst / "ClassB" / "deep" / "clip.mp4", [0, 6]).shape) == (2, 48, 32, 3)  # decord reads it


def test_a_corrupt_source_is_reported_and_the_rest_go_on_then_resume_redoes_nothing(tree, tmp_path, capsys):
    (tree / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    dst = tmp_path / "dst"
    assert cli_main(["resize", str(tree), str(dst), "--short-side", "32", "--workers", "1", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"{tree / 'broken.mp4'}: " in captured.err and "3 resized, 0 already done, 1 failed" in captured.out
    assert not (dst / "broken.mp4").exists() and not list(dst.rglob(PARTIAL_PREFIX + "*"))
    # an interrupted run's half-written file never counts as finished: removed, and its video redone
    finished = dst / "ClassB" / "deep" / "clip.mp4"
    finished.unlink()
    (finished.parent / (PARTIAL_PREFIX + "clip.mp4")).write_bytes(b"half")
    mtime = (dst / "clip.webm").stat().st_mtime_ns
    report = resize_tree(str(tree), str(dst), 32, workers=1, progress=False)
    assert (report.done, report.already, report.cleaned, [p for p, _ in report.failed]) == (1, 2, 1, [str(tree / "broken.mp4")])
    assert _probe(finished)[0] == 7 and (dst / "clip.webm").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("short_side,workers,dst,message", [
    (15, 1, "dst", "--short-side: expected an even number"),
    (0, 1, "dst", "--short-side: expected an even number"),
    (16, 0, "dst", "--workers: expected a positive number"),
    (16, 1, "src/inside", "DST: must lie outside SRC"),
], ids=["odd", "zero", "workers", "dst-inside-src"])
def test_bad_arguments_are_named_before_any_work(tree, tmp_path, short_side, workers, dst, message):
    with pytest.raises(ResizeError, match=message):
        resize_tree(str(tree), str(tmp_path / dst), short_side, workers, progress=False)
    assert not (tmp_path / "dst").exists() and not (tree / "inside").exists()


def test_scaled_size_keeps_aspect_and_even_sides():
    assert scaled_size(320, 240, 256) == (342, 256)
    assert scaled_size(240, 320, 256) == (256, 342)
    assert scaled_size(1920, 1080, 320) == (568, 320)
    assert all(v % 2 == 0 for w in range(17, 90, 7) for h in range(11, 70, 5) for v in scaled_size(w, h, 16))


# -- the third probe: concurrent runs, Ctrl-C with workers, symlinks, another short side, sizes decord refuses


def _many(src: Path, count: int, frames: int = 12) -> None:
    for n in range(count):
        _write(src / f"Class{n % 3}" / f"v_{n:03d}.mp4", frames, 48, 64, 10, "libx264")


def _resize_process(src: Path, dst: Path, *extra: str, **popen) -> subprocess.Popen:
    args = [sys.executable, "-m", "dvflnet.cli", "resize", str(src), str(dst), "--short-side", "32", "--no-progress", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_two_runs_at_once_on_one_destination_lose_nothing(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _many(src, 24)
    runs = [_resize_process(src, dst, "--workers", "2") for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err
        assert "0 failed" in out
    for video in sorted(src.rglob("*.mp4")):
        assert _probe(dst / video.relative_to(src)) == (12, 10.0, 42, 32), video
    assert not list(dst.rglob(PARTIAL_PREFIX + "*"))


def test_a_live_runs_temporary_files_are_kept_and_a_dead_ones_removed(tree, tmp_path):
    dst = tmp_path / "dst"
    (dst / "ClassA").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = dst / "ClassA" / f"{PARTIAL_PREFIX}{os.getpid()}-abcdef-v_ClassA_g01_c01.avi"
    gone = dst / "ClassA" / f"{PARTIAL_PREFIX}{int(dead.stdout)}-abcdef-v_ClassA_g01_c01.avi"
    old_kind = dst / "ClassA" / f"{PARTIAL_PREFIX}v_ClassA_g01_c01.avi"
    for path in (live, gone, old_kind):
        path.write_bytes(b"half")
    report = resize_tree(str(tree), str(dst), 16, workers=1, progress=False)
    assert report.cleaned == 2 and live.exists() and not gone.exists() and not old_kind.exists()


def _live_in_group(pgid: int) -> list[int]:
    """The processes of process group `pgid` still running (an exited one that init has not reaped
    yet, a zombie, is not)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):  # gone while read
            continue
        if int(group) == pgid and state != "Z":
            live.append(int(stat.parent.name))
    return live


def test_ctrl_c_with_workers_stops_them_and_keeps_what_is_finished(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _many(src, 30, frames=40)
    run = _resize_process(src, dst, "--workers", "2", start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(dst.rglob("v_*.mp4")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal sends: to the whole foreground group
    out, err = run.communicate(timeout=30)
    assert run.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    time.sleep(0.5)
    assert _live_in_group(run.pid) == []  # no worker left writing
    assert not list(dst.rglob(PARTIAL_PREFIX + "*"))
    finished = sorted(dst.rglob("v_*.mp4"))
    assert finished and all(_probe(path)[0] == 40 for path in finished)
    report = resize_tree(str(src), str(dst), 32, workers=2, progress=False)  # resumes
    assert report.already == len(finished) and report.done == 30 - len(finished) and not report.failed


@pytest.mark.parametrize("after_s", [0.0, 1.0], ids=["as-the-pool-starts", "as-the-workers-import"])
def test_ctrl_c_while_the_workers_are_still_starting_prints_no_traceback(tmp_path, after_s):
    # a worker imports torch for 2-3 s before its own code runs; the terminal's Ctrl-C reaches it too
    # (a CI run printed spawn_main's KeyboardInterrupt traceback), and one in the parent half-way
    # through the pool's start left a worker failing to read its start-up data
    src, dst = tmp_path / "src", tmp_path / "dst"
    _many(src, 4)
    run = _resize_process(src, dst, "--workers", "2", start_new_session=True)
    deadline = time.monotonic() + 60
    while len(_live_in_group(run.pid)) < 3 and time.monotonic() < deadline:  # a worker has started
        time.sleep(0.005)
    time.sleep(after_s)
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    time.sleep(0.5)
    assert _live_in_group(run.pid) == []
    assert not list(dst.rglob(PARTIAL_PREFIX + "*"))


def test_symlinked_class_folders_are_resized_and_a_link_back_up_is_no_loop(tree, tmp_path):
    elsewhere = tmp_path / "other-disk" / "ClassC"
    _write(elsewhere / "v_ClassC_g01_c01.avi", 6, 32, 64, 10, "mpeg4")
    (tree / "ClassC").symlink_to(elsewhere, target_is_directory=True)
    (tree / "ClassB" / "loop").symlink_to(tree, target_is_directory=True)
    report = resize_tree(str(tree), str(tmp_path / "dst"), 32, workers=1, progress=False)
    assert report.done == 4 and not report.failed
    assert _probe(tmp_path / "dst" / "ClassC" / "v_ClassC_g01_c01.avi")[0] == 6


def test_a_destination_inside_the_source_through_a_symlink_is_refused(tree, tmp_path):
    (tmp_path / "link").symlink_to(tree / "ClassA", target_is_directory=True)
    with pytest.raises(ResizeError, match="DST: must lie outside SRC .* through a symlink"):
        resize_tree(str(tree), str(tmp_path / "link" / "out"), 16, workers=1, progress=False)
    assert not (tree / "ClassA" / "out").exists()


def test_another_short_side_or_an_unreadable_file_is_made_again(tree, tmp_path, capsys):
    dst = tmp_path / "dst"
    resize_tree(str(tree), str(dst), 32, workers=1, progress=False)
    (dst / "clip.webm").write_bytes(b"\x1aE\xdf\xa3 half")  # a truncated file under the final name
    assert cli_main(["resize", str(tree), str(dst), "--short-side", "32", "--workers", "1", "--no-progress"]) == 0
    assert "1 resized (1 made again: another short side in DST, or unreadable), 2 already done" in capsys.readouterr().out
    assert _probe(dst / "clip.webm")[2:] == (42, 32)
    report = resize_tree(str(tree), str(dst), 64, workers=1, progress=False)
    assert (report.done, report.redone, report.already) == (3, 3, 0)
    assert _probe(dst / "ClassA" / "v_ClassA_g01_c01.avi")[2:] == (128, 64)


def test_a_size_decord_cannot_read_back_is_never_written(tmp_path):
    src = tmp_path / "src"
    _write(src / "wide.mp4", 5, 50, 100, 10, "libx264")
    report = resize_tree(str(src), str(tmp_path / "dst"), 24, workers=1, progress=False)
    assert report.done == 0 and "48x24 video written here does not read back with decord" in report.failed[0][1]
    assert not [p for p in (tmp_path / "dst").rglob("*") if p.is_file()]


def test_a_rotated_video_is_turned_upright_and_its_shown_short_side_scaled(tmp_path):
    import av

    src = tmp_path / "src" / "phone.mp4"
    src.parent.mkdir()
    with av.open(str(src), mode="w") as container:  # stored 128x64, shown portrait (90 degrees)
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
        stream.set_display_rotation(90)
        for _ in range(4):
            pixels = np.zeros((64, 128, 3), np.uint8)
            pixels[:16, :16] = 255  # a mark in the stored top-left corner
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    report = resize_tree(str(src.parent), str(tmp_path / "dst"), 32, workers=1, progress=False)
    assert report.done == 1, report.failed
    out = tmp_path / "dst" / "phone.mp4"
    assert _probe(out) == (4, 10.0, 32, 64)  # portrait, short side 32 of the shown size
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
        assert not frame.rotation
        luma = frame.to_ndarray(format="gray")
    # 90 degrees counter-clockwise: the stored top-left corner is shown bottom-left
    assert luma[-8:, :8].mean() > 200 and luma[:8, :8].mean() < 50 and luma[-8:, -8:].mean() < 50
