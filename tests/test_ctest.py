"""Builds CMakeLists.txt (CPU kernels against libtorch + the C++ test binary) and runs it with ctest."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_and_ctest(tmp_path):
    build = tmp_path / "build"
    steps = [
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", str(build), "-j2"],
        ["ctest", "--test-dir", str(build), "--output-on-failure"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "100% tests passed" in proc.stdout
