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
