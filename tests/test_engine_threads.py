"""CPU thread choice (engine/cpu_threads.py): explicit settings win, reserve keeps cores free, cgroup quotas cap."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.cpu_threads import _cgroup_cpu_limit, choose_threads, idle_cores, usable_core_count
from engine.errors import InputError


def test_explicit_counts_win_without_sampling():
    assert choose_threads({"NEUS_THREADS": "3", "OMP_NUM_THREADS": "5"}).threads == 3
    choice = choose_threads({"OMP_NUM_THREADS": "5"})
    assert choice.threads == 5 and choice.source == "OMP_NUM_THREADS" and choice.idle_cores is None


@pytest.mark.parametrize("env", [{"NEUS_THREADS": "0"}, {"NEUS_THREADS": "two"}, {"NEUS_RESERVE_CORES": "-1"}])
def test_bad_settings_are_input_errors_naming_the_variable(env):
    (name,) = env
    with pytest.raises(InputError, match=name):
        choose_threads(env)


def test_choice_stays_within_the_usable_cores_and_reserve_keeps_cores_free():
    usable = usable_core_count()
    assert usable <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    choice = choose_threads({}, sample_s=0.1)
    assert 1 <= choice.threads <= usable and choice.usable_cores == usable
    if choice.idle_cores is not None:
        assert 0.0 <= choice.idle_cores <= usable + 1e-6
    assert choose_threads({"NEUS_RESERVE_CORES": str(usable)}, sample_s=0.1).threads == 1  # never fewer than one
    if usable > 2:
        assert choose_threads({"NEUS_RESERVE_CORES": "1"}, sample_s=0.1).threads <= usable - 1


def test_cgroup_quota_files(tmp_path):
    assert _cgroup_cpu_limit(tmp_path) is None  # nothing readable: no cap
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_limit(tmp_path) == pytest.approx(2.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="idle cores are sampled from /proc/stat (Linux)")
def test_a_spinning_process_on_a_core_is_seen_as_busy():
    """A neighbour pinned to one core: that core is no longer counted idle (it may be busy already on a shared
    machine, so compare the pinned core alone, before and while it spins)."""
    cpus = sorted(os.sched_getaffinity(0))
    core = cpus[-1]
    spin = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True:\n    pass\n"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)  # started and spinning
        os.sched_setaffinity(0, {core})  # sample only that core (this process sleeps while sampling)
        try:
            busy = idle_cores(0.5)
        finally:
            os.sched_setaffinity(0, cpus)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy < 0.5, busy


def test_importing_the_engine_sets_a_passive_wait_policy_unless_the_user_chose():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the engine package sets it before any torch import."""
    code = "import engine, os, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
