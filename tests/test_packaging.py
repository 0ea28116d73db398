"""The build configuration and the Makefile's browser step say what they do and do it quietly."""

import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_applies_without_deprecation_warnings():
    """setuptools reads pyproject.toml without warning (the licence as an SPDX string, not a TOML table)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["license"] == "BSD-3-Clause"
    # the string form needs setuptools >= 77 (PEP 639), so the build requirement must say so
    (requirement,) = [r for r in config["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(requirement.split(">=")[1].split(".")[0]) >= 77

    from setuptools.config import pyprojecttoml
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyprojecttoml.apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [str(w.message) for w in caught]


def _fake_tools(tmp_path: Path) -> tuple[Path, Path]:
    """A bin folder with `id` (root) and `apt-get` that only records its calls, and the record file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "apt-get-calls.txt"
    scripts = {
        "id": "#!/bin/sh\necho 0\n",
        "apt-get": f'#!/bin/sh\necho "apt-get $*" >> {record}\necho "APT-GET RAN"\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir, record


def _make_browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("no make")
    if shutil.which("chromium") or os.path.exists("/usr/bin/chromium"):
        pytest.skip("chromium is installed here, so the browser step has nothing to install")
    bin_dir, _ = _fake_tools(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("CRYOSCAPE_CHROMIUM", "NO_BROWSER", "MAKEFLAGS")}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "browser", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_make_browser_says_what_it_installs_before_installing(tmp_path):
    result = _make_browser(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    apt_line = lines.index("APT-GET RAN")
    announcement = "\n".join(lines[:apt_line])
    assert "chromium" in announcement and "apt-get" in announcement and "NO_BROWSER=1" in announcement
    assert "install -y -qq chromium" in (tmp_path / "apt-get-calls.txt").read_text()


def test_make_browser_is_skipped_with_no_browser(tmp_path):
    result = _make_browser(tmp_path, "NO_BROWSER=1")
    assert result.returncode == 0, result.stderr
    assert "not installing chromium" in result.stdout
    assert not (tmp_path / "apt-get-calls.txt").exists()
