"""Compiled hot paths (built from ../../_core/*.pyx by setup.py)."""
