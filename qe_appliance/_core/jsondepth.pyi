"""Type stub of the Cython JSON depth scan (_core/jsondepth.pyx)."""

from typing_extensions import Buffer

def exceeds_depth(data: Buffer, limit: int) -> bool: ...
