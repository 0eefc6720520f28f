"""A fresh machine sets itself up: `make test` and `make run` install Chromium first when it is missing.

.ci/chromium runs here against a fake PATH (fake `id` and `apt-get`) and a fake browser path, so the
real Chromium of this machine is never touched; the Makefile is read with `make -n`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "chromium"


def fake_bin(tmp_path: Path, uid: int, apt: bool) -> tuple[Path, Path]:
    """A bin folder with `id -u` printing uid and (optionally) an apt-get that logs its arguments and,
    on install, puts an executable at the fake browser path."""
    bin_dir, log, browser = tmp_path / "bin", tmp_path / "apt.log", tmp_path / "chromium"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    if apt:
        (bin_dir / "apt-get").write_text(
            f'#!/bin/sh\necho "$@" >> {log}\n'
            f'case "$*" in *install*) printf "#!/bin/sh\\n" > {browser}; /bin/chmod +x {browser};; esac\n'
        )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, browser


def run_script(bin_dir: Path, browser: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "ATTNSCOPE_CHROMIUM": str(browser), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def test_present_chromium_is_left_alone(tmp_path):
    bin_dir, browser = fake_bin(tmp_path, 0, apt=True)
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    proc = run_script(bin_dir, browser)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""
    assert not (tmp_path / "apt.log").exists()


def test_missing_chromium_is_installed_after_one_line(tmp_path):
    bin_dir, browser = fake_bin(tmp_path, 0, apt=True)
    proc = run_script(bin_dir, browser)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "installing Debian's chromium" in lines[0]
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0].startswith("update") and calls[1].split()[-1] == "chromium" and "-y" in calls[1].split()
    assert os.access(browser, os.X_OK)


def test_not_root_stops_with_the_command(tmp_path):
    bin_dir, browser = fake_bin(tmp_path, 1000, apt=True)
    proc = run_script(bin_dir, browser)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "attnscope: error: Chromium is missing (static export and the browser tests need it); "
        "run: sudo apt-get install -y chromium"]
    assert not (tmp_path / "apt.log").exists()


def test_no_apt_get_stops_with_one_line(tmp_path):
    bin_dir, browser = fake_bin(tmp_path, 0, apt=False)
    proc = run_script(bin_dir, browser)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    assert "no apt-get" in proc.stderr and "ATTNSCOPE_CHROMIUM" in proc.stderr


def test_failed_install_is_one_line(tmp_path):
    bin_dir, browser = fake_bin(tmp_path, 0, apt=False)
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    (bin_dir / "apt-get").chmod(0o755)
    proc = run_script(bin_dir, browser)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 2  # what it is doing, then why it stopped
    assert lines[1] == "attnscope: error: apt-get could not install chromium; run: apt-get update && " \
                       "apt-get install -y chromium"


@pytest.mark.parametrize("target,then", [("test", "pytest"), ("run", "attnscope app")])
def test_make_targets_install_chromium_first(target, then, tmp_path):
    # under `make test` itself (CI) the inner make would print "make[1]: Entering directory" first
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() == "sh .ci/chromium")
    assert first == 0  # before the (slow) .venv set-up
    assert any(then in line for line in lines[first + 1:])


def test_ci_entry_point_is_make_test():
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"
