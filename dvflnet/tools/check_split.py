"""`dvflnet check-split TRAIN_CSV VAL_CSV`: does validation share anything with training?

Reads any pair of split lists: this project's `<path>,<label>` CSVs, and the public repositories'
`<path> <label>` lists (space-separated, a header row allowed). Reports:
- the same file in both (the same path), and a video listed twice within one list;
- the same file name in two folders, one per list. Whether that means the same video depends on how
  the files are named: where the training list itself reuses a name across folders (`walk/0001.mp4`,
  `run/0001.mp4`: names numbered per class), a shared name proves nothing and is not counted
  (`--same-name auto`, the default, says which it inferred; `leak` / `ignore` state it);
- the same UCF-style group (`v_<Class>_gNN_*`: one actor and scene) in both: near-duplicate clips;
- labels out of range: outside 0..K-1, K being --num-classes, or else the number of distinct labels.
Exit status: 0 clean, 1 a leak, a duplicate or a label out of range, 2 an unreadable file.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass

from .prepare import UCF_CLIP


class SplitFileError(ValueError):
    """An unreadable split list; the message names the file and line."""


@dataclass
class SplitList:
    path: str
    rows: list[tuple[str, int, int]]  # (video path, label, line number)
    header: str | None


def read_split(path: str) -> SplitList:
    """`<path>,<label>` or `<path> <label>` lines; a first line whose label is not an integer is a header."""
    if not os.path.isfile(path):
        raise SplitFileError(f"{path}: no such file")
    rows, header = [], None
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as err:
        raise SplitFileError(f"{path}: not a UTF-8 text file ({err.reason})") from None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        video, _, label = line.rpartition("," if "," in line else " ")
        video, label = video.strip().strip('"'), label.strip()
        if not re.fullmatch(r"-?\d+", label) or not video:
            if not rows and header is None:
                header = line
                continue
            raise SplitFileError(f"{path}:{number}: expected '<video>,<label>' or '<video> <label>', got {line!r}")
        rows.append((video, int(label), number))
    if not rows:
        raise SplitFileError(f"{path}: no videos listed")
    return SplitList(path, rows, header)


def _group(video: str) -> tuple[str, int] | None:
    match = UCF_CLIP.match(os.path.basename(video))
    return (match["cls"].lower(), int(match["group"])) if match else None


SAME_NAME = ("auto", "leak", "ignore")


@dataclass
class SplitReport:
    same_path: list[str]
    same_name: list[tuple[str, str]]
    duplicates: list[tuple[str, int, int]]  # (file, line, first line) of a video listed again in one list
    same_name_rule: str  # how shared file names were read, in words
    groups: dict[tuple[str, int], tuple[int, int]]  # leaking group -> (train clips, val clips)
    bad_labels: list[tuple[str, int, int]]  # (file, line, label)
    label_range: tuple[int, int]
    num_classes: int
    train: SplitList
    val: SplitList

    @property
    def leaks(self) -> bool:
        return bool(self.same_path or self.same_name or self.groups or self.bad_labels or self.duplicates)


def _duplicates(split: SplitList) -> list[tuple[str, int, int]]:
    first: dict[str, int] = {}
    found = []
    for video, _, number in split.rows:
        key = os.path.normpath(video)
        if key in first:
            found.append((split.path, number, first[key]))
        else:
            first[key] = number
    return found


def check_split(train_csv: str, val_csv: str, num_classes: int | None = None, same_name: str = "auto") -> SplitReport:
    if same_name not in SAME_NAME:
        raise ValueError(f"--same-name: expected one of {', '.join(SAME_NAME)}, got {same_name!r}")
    train, val = read_split(train_csv), read_split(val_csv)
    norm = lambda p: os.path.normpath(p)  # noqa: E731
    train_paths = {norm(v) for v, _, _ in train.rows}
    same_path = sorted({norm(v) for v, _, _ in val.rows} & train_paths)
    train_names = defaultdict(set)
    for v, _, _ in train.rows:
        train_names[os.path.basename(v)].add(norm(v))
    reused = next((sorted(paths)[:2] for paths in train_names.values() if len(paths) > 1), None)
    if same_name == "ignore":
        rule = "file names not compared (--same-name ignore)"
    elif same_name == "auto" and reused:
        rule = (f"file names not compared: the train list itself reuses names across folders ({reused[0]}, {reused[1]}), "
                "so a name is not one video (--same-name leak compares them anyway)")
    else:
        rule = "a file name in both lists counted as the same video" + (" (--same-name leak)" if same_name == "leak" else
                                                                           ": names are unique within the train list")
    compare = same_name == "leak" or (same_name == "auto" and not reused)
    shared = sorted({(t, norm(v)) for v, _, _ in val.rows for t in train_names.get(os.path.basename(v), ())
                     if t != norm(v)}) if compare else []
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for side, split in enumerate((train, val)):
        for v, _, _ in split.rows:
            key = _group(v)
            if key is not None:
                counts[key][side] += 1
    groups = {key: (a, b) for key, (a, b) in sorted(counts.items()) if a and b}
    labels = [label for split in (train, val) for _, label, _ in split.rows]
    k = num_classes if num_classes is not None else len(set(labels))
    bad = [(split.path, number, label) for split in (train, val) for _, label, number in split.rows if not 0 <= label < k]
    return SplitReport(same_path, shared, _duplicates(train) + _duplicates(val), rule, groups, bad,
                       (min(labels), max(labels)), k, train, val)


def format_report(report: SplitReport, given_classes: bool) -> str:
    lines = [f"train {report.train.path}: {len(report.train.rows)} clips; val {report.val.path}: {len(report.val.rows)} clips"
             + "".join(f"\n  {s.path}: line 1 read as a header: {s.header!r}" for s in (report.train, report.val) if s.header)]
    if report.same_path:
        lines.append(f"LEAK: {len(report.same_path)} files are in both, e.g. {', '.join(report.same_path[:3])}")
    if report.same_name:
        pairs = "; ".join(f"{a} / {b}" for a, b in report.same_name[:3])
        lines.append(f"LEAK: {len(report.same_name)} val files share a file name with a train file in another folder, e.g. {pairs}")
    if report.duplicates:
        path, number, first = report.duplicates[0]
        lines.append(f"DUPLICATE: {len(report.duplicates)} videos are listed again in the same list, first "
                     f"{path}:{number} (also line {first})")
    if report.groups:
        val_clips = sum(b for _, b in report.groups.values())
        train_clips = sum(a for a, _ in report.groups.values())
        classes = len({cls for cls, _ in report.groups})
        examples = ", ".join(f"{cls} g{group:02d} ({a} train / {b} val)" for (cls, group), (a, b) in list(report.groups.items())[:4])
        lines.append(f"LEAK: {len(report.groups)} groups (one actor and scene each) of {classes} classes are in both: "
                     f"{val_clips} val clips share a group with {train_clips} train clips, e.g. {examples}")
    if report.bad_labels:
        low, high = report.label_range
        basis = "--num-classes" if given_classes else "distinct labels"
        first = report.bad_labels[0]
        lines.append(f"LABELS: {len(report.bad_labels)} labels out of range 0..{report.num_classes - 1} "
                     f"({report.num_classes} {basis}; labels found {low}..{high}), first {first[0]}:{first[1]}: {first[2]}")
    groups = any(_group(v) for v, _, _ in report.val.rows)
    lines.append(f"  how: {report.same_name_rule}; " + ("groups read from UCF-style names (v_<Class>_gNN_cNN)" if groups
                                                       else "no UCF-style names, so no groups to compare"))
    if not report.leaks:
        lines.append(f"clean: no file, file name or group in both, no video listed twice; labels in 0..{report.num_classes - 1}")
    return "\n".join(lines)
