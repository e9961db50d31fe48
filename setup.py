"""Only the native extensions; the project's metadata lives in pyproject.toml.

They are optional: without a C compiler the package installs without them,
fastlkm.lookup.native.available() is False and fastlkm.depmod.kmod_index uses its Python
index.
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
        Extension(
            "fastlkm.depmod._scan",
            ["src/fastlkm/depmod/_scan.c", "src/fastlkm/depmod/scan_core.c"],
            depends=["src/fastlkm/depmod/scan_core.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        ),
        Extension(
            "fastlkm.depmod._kmod_index",
            ["src/fastlkm/depmod/_kmod_index.c", "src/fastlkm/depmod/kmod_index_core.c"],
            depends=["src/fastlkm/depmod/kmod_index_core.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ],
)
