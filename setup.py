"""Build of the native entropy coder ``fedrs._coder`` (C++17 + pybind11).

Every ``*.cpp`` under ``native/coder/`` is compiled into the extension, so a new source file needs
no change here.  ``FEDRS_DEBUG_BUILD=1`` builds with AddressSanitizer and UBSan (load the ASan and
libstdc++ runtimes first: ``LD_PRELOAD="$(gcc -print-file-name=libasan.so)
$(gcc -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
SOURCES = sorted(str(p.relative_to(HERE)) for p in (HERE / "native" / "coder").glob("*.cpp"))


def _extensions() -> list:
    if not SOURCES:
        return []
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        sys.exit(
            "fedrs: no C++ compiler found; the native coder needs one "
            "(Debian/Ubuntu: apt-get install g++; macOS: xcode-select --install)."
        )
    from pybind11.setup_helpers import Pybind11Extension

    debug = os.environ.get("FEDRS_DEBUG_BUILD", "") not in ("", "0")
    compile_args = ["-O1", "-g", "-fno-omit-frame-pointer"] if debug else ["-O3"]
    link_args: list[str] = []
    if debug:
        compile_args += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        link_args += ["-fsanitize=address,undefined"]
    return [
        Pybind11Extension(
            "fedrs._coder",
            SOURCES,
            include_dirs=["native/coder"],
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=[("FEDRS_DEBUG_BUILD", "1")] if debug else [],
        )
    ]


setup(ext_modules=_extensions())
