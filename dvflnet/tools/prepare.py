"""`dvflnet prepare`: the paper's five datasets, from the files their publishers distribute to the
`train.csv` / `val.csv` / `labels.csv` the engine reads.

Each reader turns the official annotation files into (class names, train rows, val rows), a row being
(video path relative to --videos, 0-based label). Then, for every dataset alike: each listed video
must be on disk (or, with missing="skip", is left out and counted), and only when everything checks are
the three CSVs written, atomically. Malformed annotation lines are reported with their file and line.

The official formats (and their quirks, each covered by tests/test_prepare.py):
- UCF101, `ucfTrainTestlist/`: classInd.txt `1 ApplyEyeMakeup` (1-based); trainlistNN.txt
  `ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`; testlistNN.txt the path alone (label from its
  folder); CRLF line ends; the folder HandstandPushups holds v_HandStandPushups_* files.
- HMDB51, `testTrainMulti_7030_splits/`: `<class>_test_split{1,2,3}.txt`, lines `<video>.avi <0|1|2> `
  (1 train, 2 test, 0 unused); classes are the sorted class names.
- UCF50: no split file; leave-one-group-out, fold N holds out group gNN; classes are the sorted folder
  names; the folder Billiards holds v_Billards_* files.
- Something-Something-v2, `labels/`: labels.json template -> id (a string); train.json /
  validation.json entries with id, label, template ("[something]" brackets removed to find the id),
  placeholders; videos `<id>.webm`; test.json (no labels) becomes a label-less test.csv for predict.
- Kinetics-400: train.csv and validate.csv (or val.csv) with the header
  label,youtube_id,time_start,time_end,split,is_cc; clips `<youtube_id>_<start:06d>_<end:06d>.<ext>`
  found by name anywhere under --videos; classes are the sorted train labels.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..data.video import is_video_name, walk_videos
from ..atomic import write_set

# A UCF-style clip name: v_<Class>_g<group>_c<clip>.<ext> (UCF101 and UCF50 alike).
UCF_CLIP = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)\.[A-Za-z0-9]+$")


class PrepareError(ValueError):
    """Bad annotation files or a missing video; the message names the file (and line) or the video."""


@dataclass
class Prepared:
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[str] | None = None  # label-less clips (SSv2's test.json)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # split -> videos left out (missing)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # split -> "where (first at where)" dropped
    ignored: list[str] = field(default_factory=list)  # folders under --videos that are not classes, and why


def _lines(path: str):
    """(line number, stripped text) of the non-empty lines of an annotation text file (CRLF or LF)."""
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: no such annotation file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if line.strip():
            yield number, line.strip()


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise PrepareError(f"{what}: no such folder: {path}")


# -- UCF101 ------------------------------------------------------------------------------------------


def ucf101(videos: str, annotations: str, split: int) -> Prepared:
    _require_dir(annotations, "--annotations")
    class_file = os.path.join(annotations, "classInd.txt")
    ids: dict[str, int] = {}
    for number, line in _lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise PrepareError(f"{class_file}:{number}: expected '<1-based id> <class>', got {line!r}")
        class_id = int(parts[0]) - 1
        if class_id != len(ids) or parts[1] in ids:
            raise PrepareError(f"{class_file}:{number}: expected class id {len(ids) + 1} with a new name, got {line!r}")
        ids[parts[1]] = class_id

    def label_of_folder(path: str, where: str) -> int:
        folder = path.split("/")[0]
        if "/" not in path or folder not in ids:
            raise PrepareError(f"{where}: {path!r} is not under a class folder of classInd.txt")
        return ids[folder]

    train, val = [], []
    train_file = os.path.join(annotations, f"trainlist{split:02d}.txt")
    for number, line in _lines(train_file):
        parts = line.split()
        where = f"{train_file}:{number}"
        if len(parts) != 2 or not parts[1].isdigit():
            raise PrepareError(f"{where}: expected '<class>/<video> <1-based label>', got {line!r}")
        label = int(parts[1]) - 1
        if label != label_of_folder(parts[0], where):
            raise PrepareError(f"{where}: label {parts[1]} does not match the folder of {parts[0]!r} in classInd.txt")
        train.append((parts[0], label, where))
    test_file = os.path.join(annotations, f"testlist{split:02d}.txt")
    for number, line in _lines(test_file):
        where = f"{test_file}:{number}"
        if len(line.split()) != 1:
            raise PrepareError(f"{where}: expected '<class>/<video>', got {line!r}")
        val.append((line, label_of_folder(line, where), where))
    return Prepared(list(ids), train, val)


# -- HMDB51 ------------------------------------------------------------------------------------------


def hmdb51(videos: str, annotations: str, split: int) -> Prepared:
    _require_dir(annotations, "--annotations")
    suffix = f"_test_split{split}.txt"
    files = sorted(name for name in os.listdir(annotations) if name.endswith(suffix))
    if not files:
        raise PrepareError(f"--annotations: no '<class>{suffix}' files in {annotations}")
    classes = sorted(name[: -len(suffix)] for name in files)
    train, val = [], []
    for label, name in enumerate(classes):
        path = os.path.join(annotations, name + suffix)
        for number, line in _lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise PrepareError(f"{path}:{number}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] != "0":  # 0: in neither split
                (train if parts[1] == "1" else val).append((f"{name}/{parts[0]}", label, f"{path}:{number}"))
    return Prepared(classes, train, val)


# -- UCF50 -------------------------------------------------------------------------------------------


def ucf50(videos: str, fold: int, output: str | None = None) -> Prepared:
    """Classes are the folders under `videos` that hold videos; hidden folders (.Trash-1000, .git), the
    output folder and folders without a video are not classes and are named in `ignored`."""
    _require_dir(videos, "--videos")
    classes, ignored = [], []
    for name in sorted(os.listdir(videos)):
        folder = os.path.join(videos, name)
        if not os.path.isdir(folder):
            continue
        if name.startswith("."):
            ignored.append(f"{name} (hidden)")
        elif output is not None and os.path.realpath(folder) == os.path.realpath(output):
            ignored.append(f"{name} (the --output folder)")
        elif not any(is_video_name(clip) for clip in os.listdir(folder)):
            ignored.append(f"{name} (no videos)")
        else:
            classes.append(name)
    if not classes:
        raise PrepareError(f"--videos: no class folders with videos in {videos}")
    train, val = [], []
    for label, name in enumerate(classes):
        for clip in sorted(os.listdir(os.path.join(videos, name))):
            if not is_video_name(clip):
                continue
            match = UCF_CLIP.match(clip)
            if not match:
                raise PrepareError(f"{os.path.join(videos, name, clip)}: not a UCF50 clip name (v_<Class>_gNN_cNN.<ext>)")
            (val if int(match["group"]) == fold else train).append((f"{name}/{clip}", label, os.path.join(videos, name, clip)))
    return Prepared(classes, train, val, ignored=ignored)


# -- Something-Something-v2 --------------------------------------------------------------------------


def _json(path: str):
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: no such annotation file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise PrepareError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: not a UTF-8 text file ({err.reason})") from None


def ssv2(videos: str, annotations: str) -> Prepared:
    _require_dir(annotations, "--annotations")
    labels_file = os.path.join(annotations, "labels.json")
    templates = _json(labels_file)
    if not isinstance(templates, dict) or not all(isinstance(v, str) and v.isdigit() for v in templates.values()):
        raise PrepareError(f"{labels_file}: expected an object mapping each template to its id as a string")
    by_id = {int(v): k for k, v in templates.items()}
    if sorted(by_id) != list(range(len(templates))):
        raise PrepareError(f"{labels_file}: expected ids 0..{len(templates) - 1}, got {sorted(by_id)[:5]}...")

    def entries(name: str, labelled: bool):
        path = os.path.join(annotations, name)
        items = _json(path)
        if not isinstance(items, list):
            raise PrepareError(f"{path}: expected a list of entries")
        for index, item in enumerate(items):
            where = f"{path}: entry {index}"
            if not isinstance(item, dict) or not str(item.get("id", "")).isdigit():
                raise PrepareError(f"{where}: expected an object with a numeric 'id', got {str(item)[:80]!r}")
            if not labelled:
                yield f"{item['id']}.webm", None, where
                continue
            template = item.get("template")
            if not isinstance(template, str):
                raise PrepareError(f"{where} (id {item['id']}): no 'template'")
            key = template.replace("[", "").replace("]", "")
            if key not in templates:
                raise PrepareError(f"{where} (id {item['id']}): template {key!r} is not in labels.json")
            yield f"{item['id']}.webm", int(templates[key]), where

    train = list(entries("train.json", True))
    val = list(entries("validation.json", True))
    test = [(path, where) for path, _, where in entries("test.json", False)] if os.path.isfile(os.path.join(annotations, "test.json")) else None
    return Prepared([by_id[i] for i in range(len(by_id))], train, val, test)


# -- Kinetics-400 ------------------------------------------------------------------------------------

K400_HEADER = ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]


def _k400_rows(path: str):
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: no such annotation file")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != K400_HEADER[:4]:
            raise PrepareError(f"{path}:1: expected the header {','.join(K400_HEADER)}, got {','.join(header or [])!r}")
        for fields in reader:
            if not any(fields):
                continue
            where = f"{path}:{reader.line_num}"
            if len(fields) < 4 or not fields[0].strip() or not fields[1].strip():
                raise PrepareError(f"{where}: expected {len(K400_HEADER)} fields (label,youtube_id,...), got {fields!r}")
            try:
                start, end = int(float(fields[2])), int(float(fields[3]))
            except ValueError:
                raise PrepareError(f"{where}: time_start / time_end {fields[2]!r}, {fields[3]!r} are not numbers") from None
            yield fields[0].strip(), f"{fields[1].strip()}_{start:06d}_{end:06d}", where


def _index_by_stem(videos: str) -> dict[str, str]:
    """clip name without extension -> path relative to `videos`, for every video file under it."""
    index: dict[str, str] = {}
    for folder, files in walk_videos(videos):  # symlinked class folders included
        for name in files:
            stem = os.path.splitext(name)[0]
            relative = os.path.relpath(os.path.join(folder, name), videos)
            if stem in index:
                raise PrepareError(f"--videos: clip {stem!r} is there twice: {index[stem]} and {relative}")
            index[stem] = relative
    return index


def k400(videos: str, annotations: str) -> Prepared:
    _require_dir(annotations, "--annotations")
    _require_dir(videos, "--videos")
    val_file = next((os.path.join(annotations, n) for n in ("validate.csv", "val.csv") if os.path.isfile(os.path.join(annotations, n))), None)
    if val_file is None:
        raise PrepareError(f"--annotations: no validate.csv or val.csv in {annotations}")
    train_rows = list(_k400_rows(os.path.join(annotations, "train.csv")))
    val_rows = list(_k400_rows(val_file))
    classes = sorted({label for label, _, _ in train_rows})
    ids = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for label, _, _ in val_rows} - set(ids))
    if unknown:
        raise PrepareError(f"{val_file}: labels not in train.csv: {', '.join(map(repr, unknown[:5]))}")
    index = _index_by_stem(videos)
    # a clip not found keeps its bare name, so that the missing-video check reports it
    train = [(index.get(clip, clip + ".mp4"), ids[label], where) for label, clip, where in train_rows]
    val = [(index.get(clip, clip + ".mp4"), ids[label], where) for label, clip, where in val_rows]
    return Prepared(classes, train, val)


@dataclass(frozen=True)
class Reader:
    """How `prepare` reads one dataset's official files.

    Args:
        read: (videos, annotations, split, fold, output) -> its classes and splits.
        annotations: it needs --annotations (UCF50 has no annotation files).
        splits: the official --split values it has (empty: it takes none).
        folds: the --fold values it has (None: it takes none).
    """

    read: Callable[[str, str | None, int, int, str | None], Prepared]
    annotations: bool = True
    splits: tuple[int, ...] = ()
    folds: range | None = None


# The datasets `prepare` reads; the CLI takes its choices from here. Adding one is a reader and a line.
READERS: dict[str, Reader] = {
    "ucf101": Reader(lambda videos, annotations, split, fold, output: ucf101(videos, annotations, split),
                     splits=(1, 2, 3)),
    "hmdb51": Reader(lambda videos, annotations, split, fold, output: hmdb51(videos, annotations, split),
                     splits=(1, 2, 3)),
    "ucf50": Reader(lambda videos, annotations, split, fold, output: ucf50(videos, fold, output), annotations=False,
                    folds=range(1, 26)),
    "ssv2": Reader(lambda videos, annotations, split, fold, output: ssv2(videos, annotations)),
    "k400": Reader(lambda videos, annotations, split, fold, output: k400(videos, annotations)),
}
DATASETS = tuple(READERS)


# -- shared: check, write, summarise -----------------------------------------------------------------


def _settle(prepared: Prepared) -> Prepared:
    """Rows read as (path, label, where) become (path, label), each video once: a video listed again in
    the same split with the same label is dropped and counted; listed with two labels, or in two splits
    (train and val, or test and either), it is an error naming both places."""
    first: dict[str, tuple[str, int | None, str]] = {}  # path -> (split, label, where) of its first listing
    for split in ("train", "val", "test"):
        rows = getattr(prepared, split)
        if rows is None:
            continue
        kept, dropped = [], []
        for row in rows:
            path, label, where = row if split != "test" else (row[0], None, row[1])
            if path in first:
                seen_split, seen_label, seen_where = first[path]
                if seen_split != split:
                    raise PrepareError(f"{where}: {path} is in {seen_split} already ({seen_where}); a video belongs "
                                       f"to one split")
                if seen_label != label:
                    raise PrepareError(f"{where}: {path} has label {label} here and {seen_label} at {seen_where}")
                dropped.append(f"{where} (first at {seen_where})")
                continue
            first[path] = (split, label, where)
            kept.append(path if split == "test" else (path, label))
        setattr(prepared, split, kept)
        if dropped:
            prepared.duplicates[split] = dropped
    return prepared


def read_dataset(dataset: str, videos: str, annotations: str | None = None, split: int = 1, fold: int = 1,
                 output: str | None = None) -> Prepared:
    """The dataset's classes and splits from its official files, each video once (nothing checked on
    disk yet); `output`, the CSVs' folder, is never read as a UCF50 class."""
    return _settle(_read(dataset, videos, annotations, split, fold, output))


def _read(dataset: str, videos: str, annotations: str | None, split: int, fold: int, output: str | None) -> Prepared:
    reader = READERS.get(dataset)
    if reader is None:
        raise PrepareError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
    if reader.splits and split not in reader.splits:
        *first, last = map(str, reader.splits)
        raise PrepareError(f"--split: expected {', '.join(first)} or {last}, got {split}")
    if reader.folds is not None and fold not in reader.folds:
        raise PrepareError(f"--fold: expected {reader.folds.start}..{reader.folds.stop - 1} (the group held out), "
                           f"got {fold}")
    if reader.annotations and annotations is None:
        raise PrepareError(f"--annotations: {dataset} needs the folder of its official annotation files")
    return reader.read(videos, annotations, split, fold, output)


def check_videos(prepared: Prepared, videos: str, missing: str = "error") -> Prepared:
    """Every listed video on disk; with missing="skip", the absent ones are left out and counted."""
    _require_dir(videos, "--videos")
    if missing not in ("error", "skip"):
        raise PrepareError(f"--missing: expected 'error' or 'skip', got {missing!r}")
    absent = {split: [path for path, _ in rows if not os.path.isfile(os.path.join(videos, path))]
              for split, rows in (("train", prepared.train), ("val", prepared.val))}
    if prepared.test is not None:
        absent["test"] = [path for path in prepared.test if not os.path.isfile(os.path.join(videos, path))]
    total = sum(map(len, absent.values()))
    if total and missing == "error":
        first = next(paths[0] for paths in absent.values() if paths)
        counts = ", ".join(f"{len(paths)} of {split}" for split, paths in absent.items() if paths)
        raise PrepareError(f"{total} listed videos are not under --videos {videos} ({counts}), e.g. {first}; "
                           "--missing skip leaves them out")
    for split in ("train", "val"):
        gone = set(absent[split])
        setattr(prepared, split, [row for row in getattr(prepared, split) if row[0] not in gone])
    if prepared.test is not None:
        gone = set(absent["test"])
        prepared.test = [path for path in prepared.test if path not in gone]
    prepared.skipped = {split: paths for split, paths in absent.items() if paths}
    if not prepared.train or not prepared.val:
        empty = "train" if not prepared.train else "val"
        raise PrepareError(f"the {empty} split has no videos on disk under {videos}")
    return prepared


def _csv_text(rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def write_csvs(prepared: Prepared, output: str, overwrite: bool = False) -> dict[str, str]:
    """train.csv, val.csv, labels.csv (and test.csv for SSv2) under `output`, written as one set (all or
    none replaced); existing files are refused unless `overwrite`."""
    files = {"train": (prepared.train,), "val": (prepared.val,), "labels": ([("id", "name"), *enumerate(prepared.classes)],)}
    if prepared.test is not None:
        files["test"] = ([(path,) for path in prepared.test],)
    paths = {name: os.path.join(output, f"{name}.csv") for name in files}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise PrepareError(f"--output: {', '.join(existing)} already exist; --overwrite replaces them")
    # one set: a failure (a full disk) leaves the old set whole, never a new train.csv beside an old val.csv
    write_set({paths[name]: _csv_text(rows).encode() for name, (rows,) in files.items()})
    return paths


def summary(prepared: Prepared, paths: dict[str, str], videos: str) -> str:
    lines = [f"{len(prepared.classes)} classes; train {len(prepared.train)} videos, val {len(prepared.val)} videos"
             + (f", test {len(prepared.test)} (no labels)" if prepared.test is not None else "")]
    for split in ("train", "val"):
        counts = Counter(label for _, label in getattr(prepared, split))
        per_class = [counts.get(i, 0) for i in range(len(prepared.classes))]
        empty = [prepared.classes[i] for i, n in enumerate(per_class) if n == 0]
        lines.append(f"  {split}: per class min {min(per_class)}, median {sorted(per_class)[len(per_class) // 2]}, "
                     f"max {max(per_class)}" + (f"; no videos: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}" if empty else ""))
    for split, gone in prepared.skipped.items():
        lines.append(f"  left out of {split}: {len(gone)} videos not on disk (--missing skip), e.g. {gone[0]}")
    for split, dropped in prepared.duplicates.items():
        lines.append(f"  {split}: {len(dropped)} duplicate listings dropped (each video kept once), e.g. {dropped[0]}")
    if prepared.ignored:
        lines.append(f"  not classes: {', '.join(prepared.ignored)}")
    lines.append("wrote " + ", ".join(paths.values()))
    lines.append("train on it with:")
    lines.append(f"  --opts data.root {videos} data.train_csv {paths['train']} data.val_csv {paths['val']} "
                 f"data.labels_csv {paths['labels']} data.num_classes {len(prepared.classes)}")
    if "test" in paths:  # its paths are relative to --videos, not to the CSV's folder
        lines.append("score the unlabelled test videos with:")
        lines.append(f"  dvflnet predict --checkpoint CKPT --root {videos} {paths['test']}")
    return "\n".join(lines)


def prepare(dataset: str, videos: str, output: str, annotations: str | None = None, split: int = 1, fold: int = 1,
            missing: str = "error", overwrite: bool = False) -> tuple[Prepared, dict[str, str]]:
    """Read, check, then write: nothing is written unless every check passes."""
    prepared = check_videos(read_dataset(dataset, videos, annotations, split, fold, output), videos, missing)
    return prepared, write_csvs(prepared, output, overwrite)
