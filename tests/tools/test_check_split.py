"""dvflnet check-split on clean and leaky pairs: the same file, the same file name in two folders, the
same UCF-style group, labels out of range; this project's CSVs and the public repositories' lists."""
from __future__ import annotations

import pytest

from dvflnet.cli import main as cli_main
from dvflnet.tools.check_split import SplitFileError, check_split


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def public_ucf101_like(classes: int = 101, groups: int = 25):
    """The public repository's UCF101 layout, rebuilt from its description: per class, clips in file
    order, the first 80% to train and the rest to val (space-separated `<path> <label>` lines). Clips
    per group cycle 4..7, as UCF101's groups hold 4-7 clips."""
    train, val = [], []
    for label in range(classes):
        name = f"Class{label:03d}"
        clips = [f"{name}/v_{name}_g{g:02d}_c{c:02d}.avi" for g in range(1, groups + 1) for c in range(1, 4 + (g + label) % 4 + 1)]
        cut = int(0.8 * len(clips))
        train += [f"{clip} {label}" for clip in clips[:cut]]
        val += [f"{clip} {label}" for clip in clips[cut:]]
    return train, val


def test_a_clean_official_split_passes(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", ["A/v_A_g08_c01.avi,0", "A/v_A_g09_c02.avi,0", "B/v_B_g10_c01.avi,1"])
    val = _write(tmp_path / "val.csv", ["A/v_A_g01_c01.avi,0", "B/v_B_g02_c01.avi,1"])
    assert cli_main(["check-split", train, val]) == 0
    out = capsys.readouterr().out
    assert "clean: no file, file name or group in both, no video listed twice; labels in 0..1" in out
    assert "groups read from UCF-style names" in out and "names are unique within the train list" in out


@pytest.mark.parametrize("train_lines,val_lines,message", [
    (["A/v_A_g08_c01.avi,0", "B/x.avi,1"], ["A/v_A_g08_c01.avi,0"], "LEAK: 1 files are in both, e.g. A/v_A_g08_c01.avi"),
    (["A/clip1.avi,0", "B/x.avi,1"], ["copies/clip1.avi,0"], "LEAK: 1 val files share a file name with a train file in another folder"),
    (["A/v_A_g19_c01.avi,0", "A/v_A_g19_c02.avi,0", "B/v_B_g01_c01.avi,1"], ["A/v_A_g19_c03.avi,0"],
     "LEAK: 1 groups (one actor and scene each) of 1 classes are in both: 1 val clips share a group with 2 train clips, e.g. a g19 (2 train / 1 val)"),
    (["a.avi,2", "b.avi,3"], ["c.avi,3"], "LABELS: 3 labels out of range 0..1 (2 distinct labels; labels found 2..3), first"),
], ids=["same-file", "same-name", "same-group", "labels-out-of-range"])
def test_leaks_are_named_and_exit_1(tmp_path, capsys, train_lines, val_lines, message):
    train, val = _write(tmp_path / "train.csv", train_lines), _write(tmp_path / "val.csv", val_lines)
    assert cli_main(["check-split", train, val]) == 1
    assert message in capsys.readouterr().out


def test_num_classes_bounds_the_labels(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", ["a.avi,0", "b.avi,4"])
    val = _write(tmp_path / "val.csv", ["c.avi,1"])
    assert cli_main(["check-split", train, val, "--num-classes", "5"]) == 0
    assert cli_main(["check-split", train, val, "--num-classes", "4"]) == 1
    assert "LABELS: 1 labels out of range 0..3 (4 --num-classes" in capsys.readouterr().out


def test_the_public_layouts_leak(tmp_path, capsys):
    """The public UCF101 lists (80/20 by file order, space-separated) leak groups; the public HMDB51
    lists (a header row, labels 2..52 for 51 classes) have labels out of range."""
    train, val = public_ucf101_like()
    assert cli_main(["check-split", _write(tmp_path / "ucf_train.txt", train), _write(tmp_path / "ucf_val.txt", val)]) == 1
    out = capsys.readouterr().out
    report = check_split(str(tmp_path / "ucf_train.txt"), str(tmp_path / "ucf_val.txt"))
    assert report.groups and "LEAK:" in out and f"{len(report.groups)} groups" in out
    hmdb_train = ["path label"] + [f"class{k}/clip{k}_{i}.avi {k + 2}" for k in range(51) for i in range(3)]
    hmdb_val = ["path label"] + [f"class{k}/clip{k}_9.avi {k + 2}" for k in range(51)]
    assert cli_main(["check-split", _write(tmp_path / "h_train.txt", hmdb_train), _write(tmp_path / "h_val.txt", hmdb_val)]) == 1
    out = capsys.readouterr().out
    assert "line 1 read as a header: 'path label'" in out and "labels out of range 0..50 (51 distinct labels; labels found 2..52)" in out


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    ("a.avi,0\nb.avi,x\n", r"train.csv:2: expected '<video>,<label>' or '<video> <label>', got 'b.avi,x'"),
    ("\n\n", "no videos listed"),
], ids=["missing", "bad-line", "empty"])
def test_unreadable_lists_are_named_and_exit_2(tmp_path, capsys, content, message):
    train = tmp_path / "train.csv"
    if content is not None:
        train.write_text(content)
    val = _write(tmp_path / "val.csv", ["c.avi,0"])
    with pytest.raises(SplitFileError, match=message):
        check_split(str(train), val)
    assert cli_main(["check-split", str(train), val]) == 2
    assert "check-split: error:" in capsys.readouterr().err


def test_a_video_listed_twice_in_one_list_is_reported(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", ["A/v_A_g08_c01.avi,0", "B/v_B_g10_c01.avi,1", "A/v_A_g08_c01.avi,0"])
    val = _write(tmp_path / "val.csv", ["A/v_A_g01_c01.avi,0", "B/v_B_g02_c01.avi,1"])
    assert cli_main(["check-split", train, val]) == 1
    assert f"DUPLICATE: 1 videos are listed again in the same list, first {train}:3 (also line 1)" in capsys.readouterr().out


def test_names_numbered_per_class_are_not_a_leak_and_the_report_says_why(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", ["walk/0001.mp4,0", "run/0001.mp4,1", "walk/0002.mp4,0"])
    val = _write(tmp_path / "val.csv", ["run/0002.mp4,1", "walk/0003.mp4,0"])
    assert cli_main(["check-split", train, val]) == 0
    out = capsys.readouterr().out
    assert "reuses names across folders (run/0001.mp4, walk/0001.mp4)" in out and "clean:" in out
    assert "no UCF-style names, so no groups to compare" in out
    assert cli_main(["check-split", train, val, "--same-name", "leak"]) == 1
    assert "share a file name with a train file in another folder" in capsys.readouterr().out
    # where names are unique in train, a shared name is still a leak; --same-name ignore states it is not
    unique = _write(tmp_path / "unique.csv", ["walk/a.mp4,0", "run/b.mp4,1"])
    moved = _write(tmp_path / "moved.csv", ["run/a.mp4,1"])
    assert cli_main(["check-split", unique, moved]) == 1
    capsys.readouterr()
    assert cli_main(["check-split", unique, moved, "--same-name", "ignore"]) == 0
    assert "file names not compared (--same-name ignore)" in capsys.readouterr().out
