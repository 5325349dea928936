"""Set-up guards: `make setup` and `make test-ltr` stop with a clear message before a full disk breaks an install."""
from __future__ import annotations

import subprocess

from conftest import REPO

REQUIRE_DISK = REPO / "scripts" / "require_disk.sh"


def run_require_disk(gib: int, folder) -> subprocess.CompletedProcess:
    return subprocess.run([str(REQUIRE_DISK), str(gib), str(folder), "The test install"], capture_output=True,
                          text=True)


def test_refuses_when_the_disk_lacks_the_space_and_says_how_much_is_free(tmp_path):
    result = run_require_disk(10**9, tmp_path / "venv")
    assert result.returncode == 1
    assert "The test install needs about 1000000000 GiB free" in result.stderr
    assert str(tmp_path) in result.stderr and "GiB are free" in result.stderr


def test_passes_quietly_when_the_space_is_there_even_for_a_folder_not_made_yet(tmp_path):
    result = run_require_disk(0, tmp_path / "not" / "made" / "yet")
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""


def test_setup_and_the_ltr_root_check_the_disk_before_installing():
    recipe = subprocess.run(["make", "-n", "-B", ".venv/.installed"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    check = next(i for i, line in enumerate(recipe) if "scripts/require_disk.sh" in line)
    install = next(i for i, line in enumerate(recipe) if "pip install -q -r requirements.txt" in line)
    assert check < install
    ltr = (REPO / "scripts" / "test_ltr.sh").read_text()
    assert ltr.index("require_disk.sh") < ltr.index("debootstrap --variant")
