"""Build the optional compiled hot path ``riverside_trio._frames_c`` from ``src/_frames.pyx``.

Everything else is in pyproject.toml. The extension is optional: without a C compiler (or
without Cython) the package installs and runs on the pure-Python twin ``_frames_py``.

Environment:
    RIVERSIDE_BUILD_EXTENSIONS=1  the extension is required: a build failure is fatal (CI).
    RIVERSIDE_BUILD_EXTENSIONS=0  do not build the extension at all.
    unset (or anything else)      try to build it; on failure warn and go on without it.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BUILD = os.environ.get("RIVERSIDE_BUILD_EXTENSIONS", "").strip()
REQUIRED = BUILD == "1"
SKIP = BUILD == "0"

PYX = os.path.join("src", "_frames.pyx")
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
}


class BuildExt(build_ext):
    """Turn off floating-point contraction so TokenBucket matches the twin bit for bit."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type in ("unix", "cygwin", "mingw32"):
            ext.extra_compile_args = [*ext.extra_compile_args, "-ffp-contract=off"]
        super().build_extension(ext)


def extensions() -> list[Extension]:
    if SKIP:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRED:
            raise
        sys.stderr.write("riverside-trio: Cython is missing; using the pure-Python frames\n")
        return []
    # Named after the Extension, not the file: never a top-level ``_frames``.
    ext = Extension("riverside_trio._frames_c", sources=[PYX])
    try:
        built = cythonize([ext], compiler_directives=DIRECTIVES)
    except Exception:
        if REQUIRED:
            raise
        sys.stderr.write("riverside-trio: cythonize failed; using the pure-Python frames\n")
        return []
    for module in built:
        module.optional = not REQUIRED  # cythonize() drops ``optional``; set it again
    return built


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
