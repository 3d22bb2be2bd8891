"""The measured choices (dvfl_kernels._probe): timed once per shape, kept per machine in the probe
cache file and reused by later processes, so that a seeded run gives the same bits every time on a
machine; a bad or unwritable file never stops a call."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from dvfl_kernels import _probe, cpu_linear
from dvfl_kernels.runtime import RUNTIME


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "probe" / "cpu-probe.json"
    monkeypatch.setenv("DVFL_PROBE_CACHE", str(path))
    saved = dict(RUNTIME.verdicts)
    _new_process()
    yield path
    _new_process()
    RUNTIME.verdicts.update(saved)


def _new_process():
    """What a new process starts with: no verdicts in memory, the file not read yet."""
    RUNTIME.verdicts.clear()
    RUNTIME.stored_verdicts.clear()
    RUNTIME.warned.clear()


def _candidates(calls: list, slow: str):
    def run(name):
        def call():
            calls.append(name)
            if name == slow:
                torch.randn(300, 300) @ torch.randn(300, 300)
        return call
    return {"a": run("a"), "b": run("b")}


def test_a_verdict_is_timed_once_then_read_by_later_processes(cache):
    calls = []
    assert _probe.fastest(("demo", 1), _candidates(calls, slow="a")) == "b"
    assert len(calls) == 2 * (1 + _probe.PROBE_ROUNDS)
    stored = json.loads(cache.read_text())
    assert stored == {_probe.machine(): {repr(("demo", 1)): "b"}}
    _new_process()
    calls.clear()
    assert _probe.fastest(("demo", 1), _candidates(calls, slow="b")) == "b" and calls == []  # read, not timed
    assert _probe.fastest(("demo", 2), _candidates(calls, slow="b")) == "a" and calls  # a new shape is timed
    assert set(json.loads(cache.read_text())[_probe.machine()]) == {repr(("demo", 1)), repr(("demo", 2))}


def test_verdicts_of_another_machine_or_unknown_names_are_not_used(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"another CPU | torch 0 | dvfl 0": {repr(("demo", 1)): "a"},
                                 _probe.machine(): {repr(("demo", 2)): "retired"}}))
    calls = []
    assert _probe.fastest(("demo", 1), _candidates(calls, slow="a")) == "b" and calls
    calls.clear()
    assert _probe.fastest(("demo", 2), _candidates(calls, slow="a")) == "b" and calls
    stored = json.loads(cache.read_text())
    assert stored["another CPU | torch 0 | dvfl 0"] == {repr(("demo", 1)): "a"}  # kept for that machine
    assert stored[_probe.machine()] == {repr(("demo", 1)): "b", repr(("demo", 2)): "b"}


def test_a_corrupt_file_is_measured_again_and_rewritten(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert _probe.fastest(("demo", 1), _candidates([], slow="a")) == "b"
    assert json.loads(cache.read_text()) == {_probe.machine(): {repr(("demo", 1)): "b"}}


@pytest.mark.parametrize("bad", [["b"], {"name": "b"}, 3, None], ids=["list", "dict", "int", "null"])
def test_a_value_of_the_wrong_type_is_measured_again_and_the_file_repaired(cache, bad):
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({_probe.machine(): {repr(("demo", 1)): bad, repr(("demo", 2)): "a"}}))
    calls = []
    assert _probe.fastest(("demo", 1), _candidates(calls, slow="a")) == "b" and calls
    assert json.loads(cache.read_text()) == {_probe.machine(): {repr(("demo", 1)): "b", repr(("demo", 2)): "a"}}


def test_the_cache_is_written_with_the_umask_not_0600(cache):
    previous = os.umask(0o022)
    try:
        _probe.fastest(("demo", 1), _candidates([], slow="a"))
    finally:
        os.umask(previous)
    assert cache.stat().st_mode & 0o777 == 0o644  # another user sharing DVFL_PROBE_CACHE reads it


def test_an_unwritable_cache_warns_once_and_the_calls_go_on(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DVFL_PROBE_CACHE", str(blocker / "cpu-probe.json"))  # its folder is a file
    _new_process()
    try:
        with pytest.warns(UserWarning, match=r"DVFL_PROBE_CACHE: cannot write .*a-file/cpu-probe.json"):
            assert _probe.fastest(("demo", 1), _candidates([], slow="a")) == "b"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once only
            assert _probe.fastest(("demo", 2), _candidates([], slow="b")) == "a"
    finally:
        _new_process()


def test_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DVFL_PROBE_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _new_process()
    try:
        assert _probe.cache_path() is None
        assert _probe.fastest(("demo", 1), _candidates([], slow="a")) == "b"
        assert list(tmp_path.iterdir()) == []
    finally:
        _new_process()


def test_the_default_file_is_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("DVFL_PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _probe.cache_path() == os.path.join(str(tmp_path), "dvfl", "cpu-probe.json")


@pytest.mark.skipif(not cpu_linear._ONEDNN, reason="this torch has no oneDNN linear: the engine has nothing to choose")
def test_two_processes_run_the_engine_to_the_same_bits(cache):
    """A small model's no-grad forward (its linears on the engine) in two fresh processes sharing the
    cache file: the second reads every choice the first timed, and gives the same bits."""
    code = (
        "import sys, torch\n"
        "from dvfl_kernels.runtime import RUNTIME\n"
        "from dvflnet.models import create_model\n"
        "torch.manual_seed(0)\n"
        "m = create_model('vfl_net_nano', num_classes=4, img_size=32, num_frames=4, embed_dim=16, depths=[1, 1, 1, 1]).eval()\n"
        "with torch.no_grad():\n"
        "    out = m(torch.randn(3, 4, 3, 32, 32))\n"
        "torch.save({'out': out, 'verdicts': {repr(k): v for k, v in RUNTIME.verdicts.items()}}, sys.argv[1])\n"
    )
    env = {**os.environ, "DVFL_PROBE_CACHE": str(cache)}
    runs = []
    for n in range(2):
        target = cache.parent.parent / f"run{n}.pt"
        subprocess.run([sys.executable, "-c", code, str(target)], env=env, check=True, timeout=300)
        runs.append(torch.load(target))
    assert runs[0]["verdicts"] and runs[0]["verdicts"] == runs[1]["verdicts"]
    assert json.loads(cache.read_text())[_probe.machine()] == runs[0]["verdicts"]
    assert torch.equal(runs[0]["out"], runs[1]["out"])
