"""Build step for the one compiled part: hwsim's native convolution kernels (loaded with ctypes).

The extension is optional: without a C compiler the install still succeeds and hwsim runs its other
exact paths (``hwsim.native_conv.available()`` is then False). The library records the sha256 of the
source it was built from (tests compare it with the source, so a stale build cannot pass unnoticed).
Everything else is in pyproject.toml.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "hwsim/native/qconv.c"
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "hwsim._qconv",
            sources=[SOURCE],
            depends=["setup.py"],
            define_macros=[("QC_SOURCE_SHA256", f'"{DIGEST}"')],
            # -fno-tree-pre: with it, GCC 12 copied each register tile accumulator twice per multiply-add step
            extra_compile_args=[
                "-O3", "-fno-tree-pre", "-std=c11", "-ffp-contract=off", "-Wall",
                "-Werror=implicit-function-declaration",
            ],  # fmt: skip
            optional=True,
        )
    ]
)
