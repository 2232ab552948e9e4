"""Cython extensions only; everything else lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["lru", "registry", "balancer", "histogram", "jsondepth"]

setup(
    ext_modules=cythonize(
        [Extension(f"qe_appliance._core.{name}", [f"_core/{name}.pyx"]) for name in MODULES],
        compiler_directives={"language_level": "3"},
        include_path=["_core"],
    ),
)
