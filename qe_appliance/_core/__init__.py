"""Compiled hot paths (built from ../../_core/*.pyx by setup.py). The .pyi stubs beside them give mypy their
types; the .pxd files are the C interfaces one kernel cimports from another.
"""
