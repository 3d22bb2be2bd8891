"""Frame sampling, decoding correctness (frames whose content encodes their index), and the errors
for missing, corrupt and truncated videos."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dvflnet.data import VideoReadError, multiview_indices, read_frames, segment_indices, video_length, write_video

LEVEL = 6  # frame i is filled with gray level i * LEVEL


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory):
    frames = np.stack([np.full((48, 64, 3), i * LEVEL, np.uint8) for i in range(40)])
    path = tmp_path_factory.mktemp("videos") / "indexed.mp4"
    write_video(path, frames)
    return path


def _decoded_index(frames: torch.Tensor) -> list[int]:
    return (frames.float().mean((1, 2, 3)) / LEVEL).round().long().tolist()


def test_read_frames_returns_the_requested_frames(indexed_video):
    assert video_length(indexed_video) == 40
    wanted = [0, 5, 39, 17, 17, 2]
    frames = read_frames(indexed_video, wanted)
    assert frames.dtype == torch.uint8 and frames.shape == (6, 48, 64, 3)
    assert _decoded_index(frames) == wanted


@pytest.mark.parametrize("train", [True, False])
def test_sampled_clip_decodes_to_the_sampled_frames(indexed_video, train):
    indices = segment_indices(40, 8, 4, train=train, rng=np.random.default_rng(1))
    assert _decoded_index(read_frames(indexed_video, indices)) == indices.tolist()


@pytest.mark.parametrize("num_frames", [1, 3, 7, 8, 11, 31, 32, 33, 300])
def test_segment_sampling_properties(num_frames):
    rng = np.random.default_rng()
    for _ in range(20):
        idx = segment_indices(num_frames, 8, 4, train=True, rng=rng)
        assert idx.shape == (8,) and idx.min() >= 0 and idx.max() < num_frames
        assert (np.diff(idx) >= 0).all() or num_frames <= 8  # ordered unless wrapped
    test = segment_indices(num_frames, 8, 4, train=False)
    assert np.array_equal(test, segment_indices(num_frames, 8, 4, train=False))  # deterministic
    span = num_frames - 4 + 1
    if span >= 8:  # one frame per segment of the usable span, at its centre
        seg = span / 8
        assert np.array_equal(test, (np.arange(8) * seg + seg / 2).astype(int))
        for k in range(8):
            lo, hi = int(k * (span // 8)), int((k + 1) * (span // 8))
            draws = {int(segment_indices(num_frames, 8, 4, True, rng)[k]) for _ in range(50)}
            assert all(lo <= d < hi for d in draws)


def test_multiview_clips_are_deterministic_and_distinct():
    views = multiview_indices(40, 8, 4)
    assert views.shape == (4, 8) and views.max() < 40
    assert len({tuple(v) for v in views.tolist()}) == 4
    assert np.array_equal(views, multiview_indices(40, 8, 4))


def test_missing_corrupt_and_truncated_videos_name_the_file(tmp_path, indexed_video):
    with pytest.raises(VideoReadError, match=r"nope\.mp4: no such file"):
        read_frames(tmp_path / "nope.mp4", [0])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(VideoReadError, match=r"junk\.mp4: cannot open"):
        read_frames(junk, [0])
    truncated = tmp_path / "truncated.mp4"
    data = indexed_video.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoReadError, match=r"truncated\.mp4"):
        read_frames(truncated, list(range(0, 40, 5)))
    with pytest.raises(VideoReadError, match=r"indexed\.mp4: frame indices must lie in \[0, 40\)"):
        read_frames(indexed_video, [0, 40])


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="multiple of 16"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 16, 24, 3), np.uint8))


def test_a_seed_writes_the_same_bytes_in_every_process(tmp_path):
    """Generating one dataset in two fresh processes gives byte-identical files (with x264's
    macroblock-tree rate control on, about one small clip in four differed)."""
    import hashlib
    import subprocess
    import sys

    code = ("import sys; from dvflnet.data.synthetic import generate_dataset; "
            "generate_dataset(sys.argv[1], train_per_class=2, val_per_class=1, num_frames=8, size=32, seed=7)")
    digests = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True, timeout=300)
        files = sorted((tmp_path / name).rglob("*.mp4"))
        assert len(files) == 30
        digests.append([(f.relative_to(tmp_path / name), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files])
    assert digests[0] == digests[1]


def test_decoded_videos_return_exactly_what_the_file_gives(tmp_path):
    """The in-memory cache of decoded videos (data.decoded_cache_mb): frame for frame what read_frames
    and video_length give from the file, for random index sets; a video past the budget is read from
    its file; bad indices are the same error."""
    from dvflnet.data.video import DecodedVideos, VideoReadError, read_frames, video_length, write_video

    rng = np.random.default_rng(0)
    paths = []
    for n, frames in enumerate((16, 9, 24)):
        path = str(tmp_path / f"v{n}.mp4")
        write_video(path, rng.integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8), fps=8)
        paths.append(path)
    cache = DecodedVideos(budget_bytes=(16 + 9) * 32 * 32 * 3)  # the first two fit, the third does not
    for _ in range(3):
        for path in paths:
            length = video_length(path)
            assert cache.video_length(path) == length
            indices = rng.integers(0, length, size=rng.integers(1, 9))
            assert torch.equal(cache.read_frames(path, indices), read_frames(path, indices))
            assert torch.equal(cache.read_frames(path, lambda n: [n - 1, 0]), read_frames(path, [length - 1, 0]))
    assert sorted(cache.videos) == sorted(paths[:2]) and cache.used_bytes == (16 + 9) * 32 * 32 * 3
    with pytest.raises(VideoReadError, match=r"frame indices must lie in \[0, 16\)"):
        cache.read_frames(paths[0], [16])


def test_a_shared_cache_serves_every_dataset_and_sees_a_rewritten_file(tmp_path, monkeypatch):
    """DecodedVideos.shared: one cache per budget while any holder lives (decoded once for all of
    them), gone with its last holder; a file rewritten at the same path is decoded again."""
    import gc

    from dvflnet.data import video

    rng = np.random.default_rng(1)
    path = str(tmp_path / "v.mp4")
    write_video(path, rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=8)
    decodes = []
    real = video.read_frames
    monkeypatch.setattr(video, "read_frames", lambda p, i: decodes.append(p) or real(p, i))
    first, second = video.DecodedVideos.shared(1 << 20), video.DecodedVideos.shared(1 << 20)
    assert first is second and video.DecodedVideos.shared(2 << 20) is not first
    before = first.read_frames(path, [0, 7])
    assert torch.equal(second.read_frames(path, [0, 7]), before) and len(decodes) == 1
    write_video(path, rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=8)  # new content, same path
    assert second.video_length(path) == 6 and len(decodes) == 2
    assert torch.equal(second.read_frames(path, [5, 0]), real(path, [5, 0]))
    assert first.used_bytes == 6 * 32 * 32 * 3 and list(first.videos) == [path]
    del first, second
    gc.collect()
    assert len(video.DecodedVideos.shared(1 << 20).videos) == 0
