"""Coverage reports of a chosen size with a known number of gaps, for tests and bench/surface_bench.py."""

from __future__ import annotations


def lcov_gaps(files: int, gaps_per_file: int = 10) -> str:
    """An LCOV report of `files` files (src/modN.py), each with `gaps_per_file` gaps of two missed lines."""
    out = []
    for i in range(files):
        out.append(f"SF:src/mod{i}.py")
        out += [f"DA:{n},{1 if n % 4 in (1, 2) else 0}" for n in range(1, 4 * gaps_per_file + 1)]
        out.append("end_of_record")
    return "\n".join(out) + "\n"
