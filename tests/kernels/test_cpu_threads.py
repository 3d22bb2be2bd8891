"""The process's CPU settings (dvfl_kernels/cpu_threads.py): usable cores from the affinity and the
cgroup quota (fake cgroup files, real sched_setaffinity), the user's count always winning, the settings
made at the first CPU forward of a plain script as in the CLI and never for commands that do not
compute, and a training run's thread count measured once and kept."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import dvfl_kernels
from dvfl_kernels import _probe, cpu_threads
from dvfl_kernels.runtime import RUNTIME


def _cgroup_v2(tmp_path, levels: dict[str, str]) -> tuple[str, str]:
    """A fake v2 hierarchy: {relative folder: cpu.max content}; the process sits in the deepest."""
    root = tmp_path / "cgroup"
    for folder, content in levels.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        if content is not None:
            (root / folder / "cpu.max").write_text(content + "\n")
    leaf = max(levels, key=len)
    membership = tmp_path / "self-cgroup"
    membership.write_text(f"0::/{leaf}\n".replace("//", "/"))
    return str(root), str(membership)


@pytest.mark.parametrize("levels,cores", [
    ({"": "max 100000"}, None),                                          # no limit: the affinity's cores
    ({"": "150000 100000"}, 1),                                          # 1.5 CPUs: one whole core
    ({"": "max 100000", "kubepods/pod1": "400000 100000"}, None),        # 4 CPUs, more than the affinity
    ({"": "max", "a": "300000 100000", "a/b": "50000 100000"}, 1),       # the tightest level wins, >= 1
    ({"": "200000 100000", "a": None}, 2),                               # a level without the file: its parent's
], ids=["unlimited", "1.5-cpus", "above-affinity", "nested", "inherited"])
def test_the_cgroup_v2_quota_caps_the_cores(tmp_path, levels, cores):
    root, membership = _cgroup_v2(tmp_path, levels)
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if cores is None else min(affinity, cores)
    assert cpu_threads.usable_cores(root, membership) == expected


def test_the_cgroup_v1_quota_caps_the_cores(tmp_path):
    root = tmp_path / "cgroup"
    folder = root / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("100000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    membership = tmp_path / "self-cgroup"
    membership.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cpu_threads.usable_cores(str(root), str(membership)) == 1
    (folder / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cpu_threads.usable_cores(str(root), str(membership)) == len(os.sched_getaffinity(0))


def test_garbage_or_missing_cgroup_files_fall_back_to_the_affinity(tmp_path):
    root, membership = _cgroup_v2(tmp_path, {"": "garbage"})
    assert cpu_threads.usable_cores(root, membership) == len(os.sched_getaffinity(0))
    assert cpu_threads.usable_cores(str(tmp_path / "none"), str(tmp_path / "none")) == len(os.sched_getaffinity(0))


def test_the_affinity_caps_the_cores_in_a_real_process():
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
           "import dvfl_kernels; print(dvfl_kernels.usable_cores())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


_SETTINGS_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    {before}
    from dvflnet.models import create_model
    import dvfl_kernels
    from dvfl_kernels.runtime import RUNTIME
    {after}
    assert RUNTIME.process_settings is None  # nothing made at import
    model = create_model("vfl_net_nano", num_classes=3, backend="auto").eval()
    with torch.inference_mode():
        model(torch.randn(1, 2, 3, 64, 64))
    print(json.dumps({{**RUNTIME.process_settings, "torch_threads": torch.get_num_threads()}}))
""")


def _settings_of(before: str = "", after: str = "", **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DVFL_THREADS")}
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", _SETTINGS_SCRIPT.format(before=before, after=after)],
                            capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_plain_script_gets_the_settings_at_its_first_cpu_forward():
    settings = _settings_of()
    cores = len(os.sched_getaffinity(0))
    assert settings["threads_from"] == "usable cores" and settings["usable_cores"] == cores
    assert settings["torch_threads"] == min(cores, settings["torch_threads"]) == settings["threads"]
    assert all(settings["keep_freed_memory"].values()) and settings["keep_freed_memory"]  # glibc here
    assert _settings_of(DVFL_KEEP_FREED_MEMORY="0")["keep_freed_memory"] == {}


@pytest.mark.parametrize("how", ["DVFL_THREADS", "OMP_NUM_THREADS", "set_num_threads"])
def test_the_users_thread_count_always_wins(how):
    if how == "set_num_threads":
        settings = _settings_of(after="torch.set_num_threads(1)")
    else:
        settings = _settings_of(**{how: "1"})
    assert settings["threads"] == settings["torch_threads"] == 1 and settings["threads_from"] == "user"


def test_a_bad_thread_count_is_named():
    result = subprocess.run([sys.executable, "-c", "import dvfl_kernels; dvfl_kernels.apply_process_settings()"],
                            capture_output=True, text=True, env={**os.environ, "DVFL_THREADS": "two"})
    assert result.returncode != 0 and "DVFL_THREADS: expected a positive integer, got 'two'" in result.stderr


def test_commands_that_do_not_compute_make_no_process_settings(tmp_path):
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    train.write_text("a/v_A_g01_c01.avi,0\n")
    val.write_text("a/v_A_g02_c01.avi,0\n")
    code = ("import sys; from dvflnet.cli import main; from dvfl_kernels.runtime import RUNTIME; "
            f"code = main(['check-split', {str(train)!r}, {str(val)!r}]); print('APPLIED', RUNTIME.process_settings); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "APPLIED None" in result.stdout, result.stdout + result.stderr


def test_a_training_runs_threads_are_measured_once_then_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DVFL_PROBE_CACHE", str(tmp_path / "probe.json"))
    monkeypatch.delenv("DVFL_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    saved_verdicts, saved_threads = dict(RUNTIME.verdicts), torch.get_num_threads()
    RUNTIME.verdicts.clear()
    RUNTIME.stored_verdicts.clear()
    monkeypatch.setattr(RUNTIME, "process_settings", None)
    monkeypatch.setattr(cpu_threads, "_THREADS_AT_IMPORT", torch.get_num_threads())
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda *a: 2)
    seen = []
    try:
        def step():  # as long on one thread as on two: a tie, which goes to one thread
            seen.append(torch.get_num_threads())
            time.sleep(0.005)

        threads = dvfl_kernels.choose_training_threads(("test", 1), step)
        assert sorted(set(seen)) == [1, 2] and len(seen) == 2 * (1 + _probe.PROBE_ROUNDS)
        # a step that costs the same either way: one thread, favoured on a near-tie
        assert threads == 1 == torch.get_num_threads()
        assert RUNTIME.process_settings["threads_from"] == "measured for training"
        stored = json.loads((tmp_path / "probe.json").read_text())[_probe.machine()]
        assert stored == {repr(("training threads", "test", 1, 2)): "1"}
        RUNTIME.verdicts.clear()
        RUNTIME.stored_verdicts.clear()
        seen.clear()
        assert dvfl_kernels.choose_training_threads(("test", 1), lambda: seen.append(1)) == 1 and seen == []  # read
    finally:
        RUNTIME.verdicts.clear()
        RUNTIME.verdicts.update(saved_verdicts)
        torch.set_num_threads(saved_threads)


def test_more_threads_are_chosen_where_they_pay(monkeypatch, tmp_path):
    monkeypatch.setenv("DVFL_PROBE_CACHE", "off")
    monkeypatch.delenv("DVFL_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    saved_threads = torch.get_num_threads()
    monkeypatch.setattr(RUNTIME, "process_settings", None)
    monkeypatch.setattr(cpu_threads, "_THREADS_AT_IMPORT", torch.get_num_threads())
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda *a: 2)
    try:  # a step twice as slow on one thread
        step = lambda: time.sleep(0.02 if torch.get_num_threads() == 1 else 0.01)  # noqa: E731
        assert dvfl_kernels.choose_training_threads(("test-pays", 1), step) == 2
    finally:
        RUNTIME.verdicts.pop(("training threads", "test-pays", 1, 2), None)
        torch.set_num_threads(saved_threads)


@pytest.fixture
def two_threads_judged(monkeypatch):
    """The process on 2 threads from its settings, no user count, every call judged; yields torch's
    thread count to restore."""
    monkeypatch.delenv("DVFL_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(cpu_threads, "_THREADS_AT_IMPORT", 2)
    monkeypatch.setattr(RUNTIME, "process_settings", {"threads": 2, "threads_from": "usable cores", "usable_cores": 2,
                                                  "keep_freed_memory": {}})
    monkeypatch.setattr(RUNTIME.guard, "one_thread_left", 0)
    monkeypatch.setattr(cpu_threads, "MIN_JUDGED_S", 0.0)
    yield saved
    cpu_threads._set_guard_threads(saved)


def test_inference_drops_to_one_thread_while_the_cores_are_shared_then_tries_again(monkeypatch, two_threads_judged):
    """A forward that got little CPU time for its wall time (a busy process on its cores) sends the
    next ONE_THREAD_FOR forwards to one thread; then all cores are tried again. Outputs stay those of
    the reference backend."""
    from dvflnet.models import create_model

    saved = two_threads_judged
    monkeypatch.setattr(cpu_threads, "ONE_THREAD_FOR", 2)
    monkeypatch.setattr(RUNTIME.guard, "one_thread_for", 2)
    torch.manual_seed(0)
    model = create_model("vfl_net_nano", num_classes=3, embed_dim=16, depths=[1, 1, 1, 1], backend="auto").eval()
    reference = create_model("vfl_net_nano", num_classes=3, embed_dim=16, depths=[1, 1, 1, 1], backend="reference").eval()
    reference.load_state_dict(model.state_dict())
    seen = []
    model.patch_embed.register_forward_hook(lambda *a: seen.append(torch.get_num_threads()))
    clip = torch.randn(1, 2, 3, 64, 64)
    contended, waited = [False], [0.0]

    def fake_wait() -> float:  # 10 s more run-queue wait at every reading while contended
        waited[0] += 10.0 if contended[0] else 0.0
        return waited[0]

    monkeypatch.setattr(cpu_threads, "run_queue_wait_s", fake_wait)  # the machine's own load plays no part
    try:
        with torch.no_grad():
            expected = reference(clip)
            contended[0] = True
            outputs = [model(clip) for _ in range(4)]
            contended[0] = False
            outputs += [model(clip) for _ in range(2)]
        # judged contended at 1 and 4: one thread for the next two, then (still shared at the retry) four
        assert seen == [2, 1, 1, 2, 1, 1] and RUNTIME.guard.one_thread_left == 2
        with torch.no_grad():
            outputs += [model(clip) for _ in range(2)]
        assert seen[6:] == [1, 1] and torch.get_num_threads() == 2  # all cores again after the last one
        with torch.no_grad():
            outputs.append(model(clip))  # free: judged, no switch, and the period back to its start
        assert seen[8] == 2 and RUNTIME.guard.one_thread_for == cpu_threads.ONE_THREAD_FOR
        assert cpu_threads.one_thread_calls() >= 6
        for out in outputs:
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        with torch.enable_grad():  # training forwards are never switched
            seen.clear()
            model(clip)
            assert seen == [2]
    finally:
        torch.set_num_threads(saved)


def test_a_training_step_that_shared_its_cores_sends_the_next_ones_to_one_thread(monkeypatch, two_threads_judged):
    saved = two_threads_judged
    monkeypatch.setattr(cpu_threads, "ONE_THREAD_FOR", 1)
    monkeypatch.setattr(cpu_threads, "MAX_ONE_THREAD_FOR", 1)
    monkeypatch.setattr(RUNTIME.guard, "one_thread_for", 1)
    waited = [0.0]

    def fake_wait() -> float:
        waited[0] += 10.0
        return waited[0]

    monkeypatch.setattr(cpu_threads, "run_queue_wait_s", fake_wait)
    x, seen, between = torch.zeros(1), [], []
    try:
        with torch.enable_grad():
            for _ in range(3):
                with cpu_threads.shared_core_guard(x, training=True):
                    seen.append(torch.get_num_threads())
                    with torch.no_grad(), cpu_threads.shared_core_guard(x):  # a teacher's forward inside: not judged
                        pass
                between.append(torch.get_num_threads())  # the work between steps follows the switch
        assert seen == [2, 1, 2] and between == [1, 2, 1] and cpu_threads.user_threads() is None
        with cpu_threads.pinned(2), cpu_threads.shared_core_guard(x, training=True):  # the user's count: kept
            seen.append(torch.get_num_threads())
        assert seen[-1] == 2
    finally:
        cpu_threads._set_guard_threads(saved)
        monkeypatch.setattr(RUNTIME.guard, "one_thread_left", 0)


def test_a_one_thread_period_ends_after_its_seconds_whatever_its_count(monkeypatch, two_threads_judged):
    """A period of slow calls (the nano's clip takes 1 s on one AVX2 thread) ends after
    MAX_ONE_THREAD_S, not after its count: all cores are tried again soon after a neighbour leaves."""
    saved = two_threads_judged
    monkeypatch.setattr(cpu_threads, "ONE_THREAD_FOR", 100)
    monkeypatch.setattr(RUNTIME.guard, "one_thread_for", 100)
    monkeypatch.setattr(cpu_threads, "MAX_ONE_THREAD_S", 1.5)
    contended, waited, now = [True], [0.0], [0.0]

    def fake_wait() -> float:
        waited[0] += 10.0 if contended[0] else 0.0
        return waited[0]

    monkeypatch.setattr(cpu_threads, "run_queue_wait_s", fake_wait)
    monkeypatch.setattr(cpu_threads.time, "perf_counter", lambda: now[0])  # a step takes 1 s, whatever the load
    x, seen = torch.zeros(1), []
    try:
        with torch.enable_grad():
            for _ in range(4):
                with cpu_threads.shared_core_guard(x, training=True):
                    seen.append(torch.get_num_threads())
                    now[0] += 1.0
                contended[0] = False  # the neighbour left after the first step
        # judged shared at the first; two one-thread steps take 2 s > 1.5 s: all cores at the fourth
        assert seen == [2, 1, 1, 2] and RUNTIME.guard.one_thread_left == 0
        contended[0] = True
        with torch.enable_grad(), cpu_threads.shared_core_guard(x, training=True):
            now[0] += 1.0
        assert torch.get_num_threads() == 1 and RUNTIME.guard.one_thread_for == 200  # doubled
        cpu_threads.forget_contention()  # a benchmark's next phase alone
        assert torch.get_num_threads() == 2 and RUNTIME.guard.one_thread_left == 0
        assert RUNTIME.guard.one_thread_for == 0 and cpu_threads.user_threads() is None
    finally:
        cpu_threads._set_guard_threads(saved)
        monkeypatch.setattr(RUNTIME.guard, "one_thread_left", 0)


def test_the_run_queue_wait_is_read_and_grows_beside_busy_processes():
    """The signal itself, with real processes: a thread spinning beside as many busy processes as
    there are usable cores waits for a core a good share of the time; alone it hardly waits."""
    def spin_and_measure(seconds: float) -> float:
        start, wall = cpu_threads.run_queue_wait_s(), time.perf_counter()
        while time.perf_counter() - wall < seconds:
            pass
        return (cpu_threads.run_queue_wait_s() - start) / (time.perf_counter() - wall)

    assert cpu_threads.run_queue_wait_s() is not None  # Linux reports it
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(os.sched_getaffinity(0)))]
    try:
        time.sleep(0.2)
        shared = spin_and_measure(1.0)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert shared > 0.1, shared
