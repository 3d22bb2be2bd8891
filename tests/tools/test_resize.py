"""dvflnet resize on real files: every frame at the source rate, the shorter side N with the aspect kept
and even sizes, the folders mirrored; a corrupt source reported by path while the rest go on; a
resumed run redoing nothing finished and never counting a half-written file."""
from __future__ import annotations

import os
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
    _write(src / "ClassA" / "v_ClassA_g01_c01.avi", 9, 64, 96, 25, "mpeg4")      # landscape
    _write(src / "ClassB" / "deep" / "clip.mp4", 7, 72, 48, 12, "libx264")        # portrait
    _write(src / "clip.webm", 5, 30, 40, 10, "libvpx-vp9")                         # 4:3, odd scale
    (src / "ClassA" / "notes.txt").write_text("not a video")
    return src


def test_every_frame_at_the_source_rate_short_side_n_aspect_kept(tree, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert cli_main(["resize", str(tree), str(dst), "--short-side", "32", "--workers", "2", "--no-progress"]) == 0
    assert "resize: 3 resized, 0 already done, 0 failed" in capsys.readouterr().out
    assert _probe(dst / "ClassA" / "v_ClassA_g01_c01.avi") == (9, 25.0, 48, 32)
    assert _probe(dst / "ClassB" / "deep" / "clip.mp4") == (7, 12.0, 32, 48)
    assert _probe(dst / "clip.webm") == (5, 10.0, 42, 32)  # 40 * 32 / 30 = 42.7 -> 42, even
    assert not (dst / "ClassA" / "notes.txt").exists()
    from dvflnet.data.video import read_frames

    assert tuple(read_frames(dst / "ClassB" / "deep" / "clip.mp4", [0, 6]).shape) == (2, 48, 32, 3)  # decord reads it


def test_a_corrupt_source_is_reported_and_the_rest_go_on_then_resume_redoes_nothing(tree, tmp_path, capsys):
    (tree / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    dst = tmp_path / "dst"
    assert cli_main(["resize", str(tree), str(dst), "--short-side", "16", "--workers", "1", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"{tree / 'broken.mp4'}: " in captured.err and "3 resized, 0 already done, 1 failed" in captured.out
    assert not (dst / "broken.mp4").exists() and not list(dst.rglob(PARTIAL_PREFIX + "*"))
    # an interrupted run's half-written file never counts as finished: removed, and its video redone
    finished = dst / "ClassB" / "deep" / "clip.mp4"
    finished.unlink()
    (finished.parent / (PARTIAL_PREFIX + "clip.mp4")).write_bytes(b"half")
    mtime = (dst / "clip.webm").stat().st_mtime_ns
    report = resize_tree(str(tree), str(dst), 16, workers=1, progress=False)
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
