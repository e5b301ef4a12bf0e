"""The native coder under AddressSanitizer and UBSan: a bounded fuzz run of the C++ decoder
(native/coder/fuzz/fuzz_coder.cpp, g++ only), and the coder tests against the sanitizer build of
the extension (``FEDRS_DEBUG_BUILD=1``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from _data import REPO

NATIVE = REPO / "native" / "coder"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("no C++ compiler (g++) found: the native coder cannot be built either")
    return cxx


def _runtime_env() -> dict[str, str]:
    env = dict(os.environ)
    # Containers often forbid what LeakSanitizer needs; memory errors are what this guards.
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


@pytest.mark.slow
def test_fuzz_decoder_under_sanitizers(tmp_path: Path) -> None:
    cxx = _compiler()
    common = [cxx, "-std=c++17", "-O1", "-g", *SANITIZE, f"-I{NATIVE}"]
    obj = tmp_path / "rans.o"
    exe = tmp_path / "fuzz_coder"
    subprocess.run(
        [*common, "-fsanitize-coverage=trace-pc", "-c", str(NATIVE / "rans.cpp"), "-o", str(obj)],
        check=True,
        timeout=600,
    )
    subprocess.run(
        [*common, str(NATIVE / "fuzz" / "fuzz_coder.cpp"), str(obj), "-o", str(exe), "-pthread"],
        check=True,
        timeout=600,
    )
    result = subprocess.run(
        [str(exe), "-runs=200000", "-max_total_time=20", "-seed=20240601"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_runtime_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fuzz_coder: done" in result.stdout
    assert "no coverage instrumentation" not in result.stdout


_INNER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("fedrs._coder", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert module.DEBUG_BUILD, "not the sanitizer build"
sys.modules["fedrs._coder"] = module
import pytest
sys.exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", sys.argv[2]]))
"""


@pytest.mark.slow
def test_coder_tests_pass_on_the_sanitizer_build(tmp_path: Path) -> None:
    env = dict(os.environ, FEDRS_DEBUG_BUILD="1")
    subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=REPO,
        env=env,
        check=True,
        timeout=900,
        capture_output=True,
    )
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    extension = tmp_path / "lib" / "fedrs" / f"_coder{suffix}"
    assert extension.exists()
    cxx = _compiler()
    runtimes = [
        subprocess.run(
            [cxx, f"-print-file-name={name}"], capture_output=True, text=True, check=True
        ).stdout.strip()
        for name in ("libasan.so", "libstdc++.so")
    ]
    env = _runtime_env()
    # The ASan runtime must come first; libstdc++ too, or ASan cannot intercept C++ throws.
    env["LD_PRELOAD"] = " ".join(runtimes)
    result = subprocess.run(
        [sys.executable, "-c", _INNER, str(extension), str(REPO / "tests" / "test_coder.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
