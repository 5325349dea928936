"""OpenMP wait policy: importing d3rsmde before torch makes waiting OpenMP threads spin briefly, then sleep (see
d3rsmde/__init__.py), unless the user chose a policy or a spin count."""

import os
import subprocess
import sys

KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def wait_settings(**user):
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update(user)
    code = ("import d3rsmde, os, torch; torch.ones(64, 64) @ torch.ones(64, 64); "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return tuple(run.stdout.split())


def test_short_spin_then_sleep_by_default_and_the_users_choice_wins():
    assert wait_settings() == ("PASSIVE", "3000")
    assert wait_settings(OMP_WAIT_POLICY="ACTIVE") == ("ACTIVE", "None")
    assert wait_settings(GOMP_SPINCOUNT="0") == ("PASSIVE", "0")


def test_worker_pool_keeps_order_bounds_work_in_flight_and_splits_threads():
    """Results come back in input order whatever finishes first; no more than ``workers`` items run at once; each
    worker runs torch on its share of the caller's threads, and the caller's own setting is left alone."""
    import threading
    import time

    import torch

    from d3rsmde.raster.workers import WorkerPool

    caller = torch.get_num_threads()
    running, peak, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 * (i % 3))  # later items often finish first
        with lock:
            running[0] -= 1
        return i * i, torch.get_num_threads(), threading.current_thread().name

    with WorkerPool(2) as pool:
        out = list(pool.map(work, range(12)))
    assert [item for item, _ in out] == list(range(12))
    assert [r[0] for _, r in out] == [i * i for i in range(12)]
    assert peak[0] == 2
    assert {r[1] for _, r in out} == {max(caller // 2, 1)}
    assert all(r[2].startswith("d3rsmde-infer") for _, r in out)
    assert torch.get_num_threads() == caller
    with WorkerPool(1) as pool:  # one worker: the caller's thread
        assert [r[2] for _, r in pool.map(work, range(2))] == [threading.current_thread().name] * 2


def test_worker_pool_raises_a_workers_error_in_the_caller():
    import pytest

    from d3rsmde.raster.workers import WorkerPool

    def work(i):
        if i == 3:
            raise RuntimeError("device lost (simulated)")
        return i

    with pytest.raises(RuntimeError, match="simulated"), WorkerPool(2) as pool:
        list(pool.map(work, range(8)))
