"""OpenMP wait policy: importing d3rsmde before torch makes waiting OpenMP threads sleep, not spin (see
d3rsmde/__init__.py), unless the user chose a policy."""

import os
import subprocess
import sys


def wait_policy(env_value):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    code = "import d3rsmde, os, torch; torch.ones(64, 64) @ torch.ones(64, 64); print(os.environ['OMP_WAIT_POLICY'])"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_passive_by_default_and_the_users_choice_wins():
    assert wait_policy(None) == "PASSIVE"
    assert wait_policy("ACTIVE") == "ACTIVE"
