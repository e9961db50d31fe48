"""Only the native lookup engine; the project's metadata lives in pyproject.toml.

The extension is optional: without a C compiler the package installs without it and
fastlkm.lookup.native.available() is False.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fastlkm.lookup._native",
            ["src/fastlkm/lookup/_native.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ],
)
