"""dvflnet prepare: fixture trees of the five datasets as their publishers lay them out (tiny real
videos, the official annotation formats with their quirks), exact rows for each; missing videos,
malformed lines and wrong folders as clear errors; nothing written until everything checks."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dvflnet.cli import main as cli_main
from dvflnet.data.video import write_video
from dvflnet.tools.prepare import PrepareError, prepare


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One tiny real video (H.264); each fixture video is a copy of its bytes."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(path, rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), fps=8)
    return path


def _videos(root: Path, clip: Path, paths) -> None:
    for relative in paths:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, root / relative)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _outputs(output: Path) -> dict[str, list[list[str]]]:
    """The three CSVs' rows; labels.csv's `id,name` header (as generate-data writes it) checked and left out."""
    rows = {name: _rows(output / f"{name}.csv") for name in ("train", "val", "labels")}
    assert rows["labels"][0] == ["id", "name"]
    return {**rows, "labels": rows["labels"][1:]}


# -- UCF101 ------------------------------------------------------------------------------------------


def _ucf101(tmp_path: Path, clip: Path) -> tuple[Path, Path]:
    videos, notes = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    notes.mkdir()
    crlf = lambda lines: "".join(line + "\r\n" for line in lines)  # noqa: E731
    (notes / "classInd.txt").write_bytes(crlf(["1 ApplyEyeMakeup", "2 HandstandPushups", "3 YoYo"]).encode())
    (notes / "trainlist01.txt").write_bytes(crlf([
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
        "HandstandPushups/v_HandStandPushups_g09_c02.avi 2",
        "YoYo/v_YoYo_g10_c01.avi 3",
    ]).encode())
    (notes / "testlist01.txt").write_bytes(crlf([
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "HandstandPushups/v_HandStandPushups_g01_c03.avi",
        "YoYo/v_YoYo_g02_c04.avi",
    ]).encode())
    (notes / "trainlist02.txt").write_bytes(crlf(["YoYo/v_YoYo_g01_c01.avi 3"]).encode())
    (notes / "testlist02.txt").write_bytes(crlf(["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"]).encode())
    _videos(videos, clip, ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g09_c02.avi",
                           "YoYo/v_YoYo_g10_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                           "HandstandPushups/v_HandStandPushups_g01_c03.avi", "YoYo/v_YoYo_g02_c04.avi", "YoYo/v_YoYo_g01_c01.avi"])
    return videos, notes


def test_ucf101_official_split(tmp_path, clip, capsys):
    videos, notes = _ucf101(tmp_path, clip)
    out = tmp_path / "out"
    assert cli_main(["prepare", "ucf101", "--videos", str(videos), "--annotations", str(notes), "--split", "1", "--output", str(out)]) == 0
    assert _outputs(out) == {
        "train": [["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "0"], ["HandstandPushups/v_HandStandPushups_g09_c02.avi", "1"],
                  ["YoYo/v_YoYo_g10_c01.avi", "2"]],
        "val": [["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "0"], ["HandstandPushups/v_HandStandPushups_g01_c03.avi", "1"],
                ["YoYo/v_YoYo_g02_c04.avi", "2"]],
        "labels": [["0", "ApplyEyeMakeup"], ["1", "HandstandPushups"], ["2", "YoYo"]],
    }
    printed = capsys.readouterr().out
    assert "3 classes; train 3 videos, val 3 videos" in printed
    assert f"--opts data.root {videos} data.train_csv {out / 'train.csv'}" in printed and "data.num_classes 3" in printed
    # split 2 reads trainlist02 / testlist02
    prepared, _ = prepare("ucf101", str(videos), str(tmp_path / "two"), str(notes), split=2)
    assert prepared.train == [("YoYo/v_YoYo_g01_c01.avi", 2)] and prepared.val == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0)]


@pytest.mark.parametrize("file,content,message", [
    ("trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\r\n", r"trainlist01.txt:1: expected '<class>/<video> <1-based label>'"),
    ("trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nYoYo/v_YoYo_g10_c01.avi 1\r\n",
     r"trainlist01.txt:2: label 1 does not match the folder of 'YoYo/v_YoYo_g10_c01.avi'"),
    ("testlist01.txt", "Nope/v_Nope_g01_c01.avi\r\n", r"testlist01.txt:1: 'Nope/v_Nope_g01_c01.avi' is not under a class folder"),
    ("classInd.txt", "1 ApplyEyeMakeup\r\n3 YoYo\r\n", r"classInd.txt:2: expected class id 2"),
], ids=["no-label", "label-vs-folder", "unknown-folder", "class-ids"])
def test_ucf101_malformed_lines_name_file_and_line(tmp_path, clip, file, content, message):
    _assert_refused_before_writing("ucf101", *_ucf101(tmp_path, clip), tmp_path, file, content, message)


def _assert_refused_before_writing(dataset, videos, notes, tmp_path, file, content, message):
    """`file` of the official notes replaced by `content`: prepare refuses with `message`, writes nothing."""
    (notes / file).write_text(content)
    with pytest.raises(PrepareError, match=message):
        prepare(dataset, str(videos), str(tmp_path / "out"), str(notes))
    assert not (tmp_path / "out").exists()


def test_missing_videos_are_an_error_before_anything_is_written_or_skipped_and_counted(tmp_path, clip, capsys):
    videos, notes = _ucf101(tmp_path, clip)
    (videos / "YoYo" / "v_YoYo_g10_c01.avi").unlink()
    (videos / "YoYo" / "v_YoYo_g02_c04.avi").unlink()
    out = tmp_path / "out"
    args = ["prepare", "ucf101", "--videos", str(videos), "--annotations", str(notes), "--output", str(out)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "2 listed videos are not under --videos" in err and "1 of train, 1 of val" in err and "YoYo/v_YoYo_g10_c01.avi" in err
    assert not out.exists()
    assert cli_main(args + ["--missing", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "left out of train: 1 videos not on disk" in printed and "left out of val: 1 videos" in printed
    assert len(_rows(out / "train.csv")) == 2 and len(_rows(out / "val.csv")) == 2
    # existing CSVs are refused, then replaced with --overwrite
    assert cli_main(args + ["--missing", "skip"]) == 2
    assert "already exist; --overwrite replaces them" in capsys.readouterr().err
    assert cli_main(args + ["--missing", "skip", "--overwrite"]) == 0


def test_wrong_folders_and_arguments_are_named(tmp_path, clip, capsys):
    videos, notes = _ucf101(tmp_path, clip)
    cases = [
        (["ucf101", "--videos", str(videos), "--annotations", str(tmp_path / "nope")], "--annotations: no such folder"),
        (["ucf101", "--videos", str(tmp_path / "nope"), "--annotations", str(notes)], "--videos: no such folder"),
        (["ucf101", "--videos", str(videos)], "--annotations: ucf101 needs the folder"),
        (["ucf101", "--videos", str(videos), "--annotations", str(notes), "--split", "4"], "--split: expected 1, 2 or 3"),
        (["ucf50", "--videos", str(videos), "--fold", "26"], "--fold: expected 1..25"),
        (["hmdb51", "--videos", str(videos), "--annotations", str(notes)], "no '<class>_test_split1.txt' files"),
    ]
    for args, message in cases:
        assert cli_main(["prepare", *args, "--output", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- HMDB51 ------------------------------------------------------------------------------------------


def test_hmdb51_split_files(tmp_path, clip):
    videos, notes = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    notes.mkdir()
    split = {"brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1), ("Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi", 2),
                            ("unused_brush_hair_0.avi", 0)],
             "cartwheel": [("Bodenturnen_cartwheel_f_cm_np1_le_med_0.avi", 2), ("Cartwheel_cartwheel_f_cm_np1_ri_med_1.avi", 1)]}
    for name, rows in split.items():
        for n in (1, 2, 3):  # the trailing space of the official lines
            (notes / f"{name}_test_split{n}.txt").write_text("".join(f"{video} {flag} \n" for video, flag in rows))
        _videos(videos, clip, [f"{name}/{video}" for video, flag in rows if flag])
    prepared, paths = prepare("hmdb51", str(videos), str(tmp_path / "out"), str(notes), split=2)
    assert prepared.classes == ["brush_hair", "cartwheel"]
    assert _outputs(tmp_path / "out") == {
        "train": [["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "0"], ["cartwheel/Cartwheel_cartwheel_f_cm_np1_ri_med_1.avi", "1"]],
        "val": [["brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi", "0"],
                ["cartwheel/Bodenturnen_cartwheel_f_cm_np1_le_med_0.avi", "1"]],
        "labels": [["0", "brush_hair"], ["1", "cartwheel"]],
    }
    (notes / "cartwheel_test_split1.txt").write_text("a.avi 1 \nb.avi 3 \n")
    with pytest.raises(PrepareError, match=r"cartwheel_test_split1.txt:2: expected '<video> <0\|1\|2>', got 'b.avi 3'"):
        prepare("hmdb51", str(videos), str(tmp_path / "o1"), str(notes), split=1)


# -- UCF50 -------------------------------------------------------------------------------------------


def test_ucf50_leave_one_group_out(tmp_path, clip):
    videos = tmp_path / "UCF50"
    _videos(videos, clip, ["Billiards/v_Billards_g01_c01.avi", "Billiards/v_Billards_g05_c02.avi", "BaseballPitch/v_BaseballPitch_g05_c01.avi",
                           "BaseballPitch/v_BaseballPitch_g25_c04.avi"])
    (videos / "Billiards" / "readme.txt").write_text("not a video")
    prepared, _ = prepare("ucf50", str(videos), str(tmp_path / "out"), fold=5)
    assert prepared.classes == ["BaseballPitch", "Billiards"]
    assert _outputs(tmp_path / "out")["train"] == [["BaseballPitch/v_BaseballPitch_g25_c04.avi", "0"], ["Billiards/v_Billards_g01_c01.avi", "1"]]
    assert _outputs(tmp_path / "out")["val"] == [["BaseballPitch/v_BaseballPitch_g05_c01.avi", "0"], ["Billiards/v_Billards_g05_c02.avi", "1"]]
    _videos(videos, clip, ["Billiards/billiards_extra.avi"])
    with pytest.raises(PrepareError, match=r"billiards_extra.avi: not a UCF50 clip name"):
        prepare("ucf50", str(videos), str(tmp_path / "o2"), fold=5)


# -- Something-Something-v2 --------------------------------------------------------------------------


def _ssv2(tmp_path: Path, clip: Path) -> tuple[Path, Path]:
    videos, notes = tmp_path / "20bn-something-something-v2", tmp_path / "labels"
    notes.mkdir()
    (notes / "labels.json").write_text(json.dumps({"Holding something next to something": "1", "Approaching something with your camera": "0"}))
    (notes / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle", "template": "Holding [something] next to [something]",
         "placeholders": ["potato", "vicks vaporub bottle"]},
        {"id": "42326", "label": "approaching a cup with your camera", "template": "Approaching [something] with your camera", "placeholders": ["a cup"]},
    ], indent=1))
    (notes / "validation.json").write_text(json.dumps([
        {"id": "74225", "label": "approaching a door", "template": "Approaching [something] with your camera", "placeholders": ["a door"]}]))
    (notes / "test.json").write_text(json.dumps([{"id": "1420"}, {"id": "9"}]))
    _videos(videos, clip, ["78687.webm", "42326.webm", "74225.webm", "1420.webm", "9.webm"])
    return videos, notes


def test_ssv2_templates_and_test_list(tmp_path, clip):
    videos, notes = _ssv2(tmp_path, clip)
    prepared, paths = prepare("ssv2", str(videos), str(tmp_path / "out"), str(notes))
    assert _outputs(tmp_path / "out") == {
        "train": [["78687.webm", "1"], ["42326.webm", "0"]], "val": [["74225.webm", "0"]],
        "labels": [["0", "Approaching something with your camera"], ["1", "Holding something next to something"]],
    }
    assert _rows(tmp_path / "out" / "test.csv") == [["1420.webm"], ["9.webm"]]  # for predict --root VIDEOS


@pytest.mark.parametrize("file,content,message", [
    ("train.json", '[{"id": "1", "template": "Holding [something]"', r"train.json:1:\d+: not valid JSON"),
    ("validation.json", '[{"id": "1", "template": "Unknown [something]"}]', r"validation.json: entry 0 \(id 1\): template 'Unknown something' is not in labels.json"),
    ("labels.json", '{"a": 0}', r"labels.json: expected an object mapping each template to its id as a string"),
    ("train.json", '[{"template": "x"}]', r"train.json: entry 0: expected an object with a numeric 'id'"),
], ids=["truncated", "unknown-template", "int-ids", "no-id"])
def test_ssv2_malformed_files_are_named(tmp_path, clip, file, content, message):
    _assert_refused_before_writing("ssv2", *_ssv2(tmp_path, clip), tmp_path, file, content, message)


# -- Kinetics-400 ------------------------------------------------------------------------------------


def _k400(tmp_path: Path, clip: Path, val_name: str = "validate.csv") -> tuple[Path, Path]:
    videos, notes = tmp_path / "kinetics400", tmp_path / "k400_annotations"
    notes.mkdir()
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    (notes / "train.csv").write_text(header + '"abseiling",--07WQ2iBlw,1,11,train,0\n'
                                     '"air drumming",-0DvXWnfJPo,30,40,train,0\n"abseiling",0347ZoDXyP0,102,112,train,0\n')
    (notes / val_name).write_text(header + '"air drumming",-2l3sKD2Mm4,46,56,val,0\n')
    # flat, per-split and per-class layouts, found by name
    _videos(videos, clip, ["train/abseiling/--07WQ2iBlw_000001_000011.mp4", "train/-0DvXWnfJPo_000030_000040.mp4",
                           "0347ZoDXyP0_000102_000112.mp4", "val/air drumming/-2l3sKD2Mm4_000046_000056.mp4"])
    return videos, notes


@pytest.mark.parametrize("val_name", ["validate.csv", "val.csv"])
def test_k400_clips_found_by_name_in_any_layout(tmp_path, clip, val_name):
    videos, notes = _k400(tmp_path, clip, val_name)
    prepare("k400", str(videos), str(tmp_path / "out"), str(notes))
    assert _outputs(tmp_path / "out") == {
        "train": [["train/abseiling/--07WQ2iBlw_000001_000011.mp4", "0"], ["train/-0DvXWnfJPo_000030_000040.mp4", "1"],
                  ["0347ZoDXyP0_000102_000112.mp4", "0"]],
        "val": [["val/air drumming/-2l3sKD2Mm4_000046_000056.mp4", "1"]],
        "labels": [["0", "abseiling"], ["1", "air drumming"]],
    }


def test_k400_missing_clips_skip_and_bad_rows(tmp_path, clip):
    videos, notes = _k400(tmp_path, clip)
    os.unlink(videos / "0347ZoDXyP0_000102_000112.mp4")
    with pytest.raises(PrepareError, match=r"1 listed videos are not under --videos .* \(1 of train\), e.g. 0347ZoDXyP0_000102_000112.mp4"):
        prepare("k400", str(videos), str(tmp_path / "out"), str(notes))
    prepared, _ = prepare("k400", str(videos), str(tmp_path / "out"), str(notes), missing="skip")
    assert len(prepared.train) == 2 and prepared.skipped == {"train": ["0347ZoDXyP0_000102_000112.mp4"]}
    (notes / "validate.csv").write_text("youtube_id,label\n")
    with pytest.raises(PrepareError, match=r"validate.csv:1: expected the header label,youtube_id"):
        prepare("k400", str(videos), str(tmp_path / "o2"), str(notes))
    (notes / "validate.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\nabseiling,x,1,zz,val,0\n")
    with pytest.raises(PrepareError, match=r"validate.csv:2: time_start / time_end '1', 'zz' are not numbers"):
        prepare("k400", str(videos), str(tmp_path / "o3"), str(notes))
    (notes / "validate.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\nbowling,x,1,2,val,0\n")
    with pytest.raises(PrepareError, match=r"validate.csv: labels not in train.csv: 'bowling'"):
        prepare("k400", str(videos), str(tmp_path / "o4"), str(notes))


def test_the_prepared_csvs_train(tmp_path, clip):
    """What prepare writes is what the engine reads: every row resolves under data.root."""
    from dvflnet.data.dataset import read_annotations, read_class_names

    videos, notes = _ucf101(tmp_path, clip)
    _, paths = prepare("ucf101", str(videos), str(tmp_path / "out"), str(notes))
    rows = read_annotations(paths["train"], str(videos), num_classes=3)
    assert all(os.path.isfile(path) for path, _ in rows) and read_class_names(paths["labels"]) == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


# -- the third probe: a set written whole or not at all, symlinked classes, stray folders, duplicates


def _split_one_then_two_on_a_full_disk(tmp_path: Path, clip: Path, out: Path, fill, others=()) -> None:
    """Split 1 prepared in `out`, then `fill()` leaves no room, then --split 2 --overwrite fails:
    split 1's three files are still there, whole, beside `others` and no temporary file."""
    videos, notes = _ucf101(tmp_path, clip)
    prepare("ucf101", str(videos), str(out), str(notes), split=1)
    before = _outputs(out)
    fill()
    with pytest.raises(OSError, match="none of them was replaced"):
        prepare("ucf101", str(videos), str(out), str(notes), split=2, overwrite=True)
    assert _outputs(out) == before  # still split 1, all three
    assert sorted(p.name for p in out.iterdir()) == sorted(["labels.csv", "train.csv", "val.csv", *others])


def test_a_failed_overwrite_on_a_full_disk_leaves_the_old_set_whole(tmp_path, clip):
    """A real full disk: a 64 KiB tmpfs (root only: mounting needs it)."""
    out = tmp_path / "out"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the next test fails a write instead")
    try:
        def fill():
            with open(out / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 4096)

        _split_one_then_two_on_a_full_disk(tmp_path, clip, out, fill, others=["filler"])
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_a_write_failing_midway_through_the_set_replaces_none(tmp_path, clip, monkeypatch):
    import dvflnet.atomic as atomic

    real = atomic._temporary_beside

    def third_file_fails(path):
        if path.endswith("labels.csv"):
            raise OSError(28, f"{path}: cannot write here (No space left on device)")
        return real(path)

    out = tmp_path / "out"
    _split_one_then_two_on_a_full_disk(tmp_path, clip, out, lambda: monkeypatch.setattr(atomic, "_temporary_beside", third_file_fails))


def test_symlinked_class_folders_are_found(tmp_path, clip):
    videos, notes = _k400(tmp_path, clip)
    elsewhere = tmp_path / "other-disk" / "air drumming"
    (videos / "val" / "air drumming").rename(tmp_path / "moved")
    elsewhere.parent.mkdir()
    (tmp_path / "moved").rename(elsewhere)
    (videos / "val" / "air drumming").symlink_to(elsewhere, target_is_directory=True)
    (videos / "loop").symlink_to(videos, target_is_directory=True)  # a link back up: no loop, no twin
    prepared, _ = prepare("k400", str(videos), str(tmp_path / "out"), str(notes))
    assert prepared.val == [("val/air drumming/-2l3sKD2Mm4_000046_000056.mp4", 1)]


def test_ucf50_classes_are_only_folders_with_videos(tmp_path, clip, capsys):
    videos = tmp_path / "UCF50"
    _videos(videos, clip, ["Billiards/v_Billards_g01_c01.avi", "BaseballPitch/v_BaseballPitch_g05_c01.avi",
                           ".Trash-1000/files/v_Old_g01_c01.avi", "Billiards/._v_Billards_g01_c01.avi"])
    (videos / "AAA-notes").mkdir()
    out = videos / "csv"  # the output inside --videos, on a rerun
    args = ["prepare", "ucf50", "--videos", str(videos), "--output", str(out), "--fold", "5"]
    for _ in range(2):
        assert cli_main(args + ["--overwrite"]) == 0
        printed = capsys.readouterr().out
        assert _outputs(out)["labels"] == [["0", "BaseballPitch"], ["1", "Billiards"]]
    assert "not classes: .Trash-1000 (hidden), AAA-notes (no videos), csv (the --output folder)" in printed


def _ucf101_lines(tmp_path, clip, train_lines, test_lines):
    videos, notes = _ucf101(tmp_path, clip)
    (notes / "trainlist03.txt").write_text("".join(line + "\n" for line in train_lines))
    (notes / "testlist03.txt").write_text("".join(line + "\n" for line in test_lines))
    return videos, notes


def test_a_duplicate_listing_is_dropped_and_counted(tmp_path, clip, capsys):
    videos, notes = _ucf101_lines(tmp_path, clip, ["YoYo/v_YoYo_g10_c01.avi 3", "YoYo/v_YoYo_g01_c01.avi 3",
                                                    "YoYo/v_YoYo_g10_c01.avi 3"], ["YoYo/v_YoYo_g02_c04.avi"])
    out = tmp_path / "out"
    assert cli_main(["prepare", "ucf101", "--videos", str(videos), "--annotations", str(notes), "--split", "3",
                     "--output", str(out)]) == 0
    assert _rows(out / "train.csv") == [["YoYo/v_YoYo_g10_c01.avi", "2"], ["YoYo/v_YoYo_g01_c01.avi", "2"]]
    assert f"train: 1 duplicate listings dropped (each video kept once), e.g. {notes / 'trainlist03.txt'}:3 (first at " \
           f"{notes / 'trainlist03.txt'}:1)" in capsys.readouterr().out


@pytest.mark.parametrize("dataset", ["ucf101-train-and-test", "hmdb51-both", "ssv2-train-and-validation", "ssv2-two-labels"])
def test_a_video_in_two_splits_or_with_two_labels_is_an_error_naming_both(tmp_path, clip, dataset):
    if dataset == "ucf101-train-and-test":
        videos, notes = _ucf101_lines(tmp_path, clip, ["YoYo/v_YoYo_g10_c01.avi 3"], ["YoYo/v_YoYo_g10_c01.avi"])
        args, match = ("ucf101", str(videos), str(tmp_path / "out"), str(notes), 3), \
            r"testlist03.txt:1: YoYo/v_YoYo_g10_c01.avi is in train already \(.*trainlist03.txt:1\)"
    elif dataset == "hmdb51-both":
        videos, notes = tmp_path / "hmdb51", tmp_path / "splits"
        notes.mkdir()
        (notes / "wave_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \na.avi 2 \n")
        _videos(videos, clip, ["wave/a.avi", "wave/b.avi"])
        args, match = ("hmdb51", str(videos), str(tmp_path / "out"), str(notes), 1), \
            r"wave_test_split1.txt:3: wave/a.avi is in train already \(.*wave_test_split1.txt:1\)"
    else:
        videos, notes = _ssv2(tmp_path, clip)
        entries = json.loads((notes / "train.json").read_text())
        if dataset == "ssv2-train-and-validation":
            (notes / "validation.json").write_text(json.dumps([entries[0]]))
            match = r"validation.json: entry 0: 78687.webm is in train already \(.*train.json: entry 0"
        else:
            (notes / "train.json").write_text(json.dumps(entries + [{**entries[1], "id": "78687"}]))
            match = r"train.json: entry 2: 78687.webm has label 0 here and 1 at .*train.json: entry 0"
        args = ("ssv2", str(videos), str(tmp_path / "out"), str(notes))
    with pytest.raises(PrepareError, match=match):
        prepare(*args)
    assert not (tmp_path / "out").exists()


def test_ssv2_test_videos_are_checked_on_disk_and_predict_is_shown_with_root(tmp_path, clip, capsys):
    videos, notes = _ssv2(tmp_path, clip)
    (videos / "9.webm").unlink()
    out = tmp_path / "out"
    args = ["prepare", "ssv2", "--videos", str(videos), "--annotations", str(notes), "--output", str(out)]
    assert cli_main(args) == 2
    assert "1 listed videos are not under --videos" in capsys.readouterr().err and not out.exists()
    assert cli_main(args + ["--missing", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "left out of test: 1 videos not on disk" in printed
    assert f"dvflnet predict --checkpoint CKPT --root {videos} {out / 'test.csv'}" in printed
    assert _rows(out / "test.csv") == [["1420.webm"]]
    from dvflnet.tools.predict import expand_inputs

    assert all(os.path.isfile(p) for p in expand_inputs([str(out / "test.csv")], root=str(videos)))
