"""Cython extensions only; everything else lives in pyproject.toml.

Sources are in _core/; the .pxd files one kernel cimports from another sit in qe_appliance/_core/ (shipped
with the package), found from the repository root by their qualified names.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["lru", "registry", "balancer", "histogram", "jsondepth", "httphead"]

setup(
    ext_modules=cythonize(
        [Extension(f"qe_appliance._core.{name}", [f"_core/{name}.pyx"]) for name in MODULES],
        compiler_directives={"language_level": "3"},
        include_path=["."],
    ),
)
