# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""Nesting depth of a JSON text, found by one linear byte scan without decoding or allocating.

Decoders recurse once per `[`/`{`; scanning first lets the server refuse a body nested too deeply with a
clear error instead of letting the decoder run out of stack.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.string cimport memchr


def exceeds_depth(data, int limit) -> bool:
    """True when `[`/`{` outside strings nest more than `limit` levels deep anywhere in `data`.

    `data` is any contiguous bytes-like object (bytes, bytearray, memoryview). Strings honour backslash
    escapes, so brackets inside them do not count. A closer with nothing open is ignored rather than
    counted below zero: the scan never under-reports what a decoder would reach before it notices the
    text is malformed.
    """
    cdef Py_buffer view
    if limit < 0:
        raise ValueError(f"the depth limit must be 0 or more, got {limit}")
    # The buffer protocol directly rather than a typed memoryview: no object is created per call.
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _exceeds(<const unsigned char*>view.buf, view.len, limit)
    finally:
        PyBuffer_Release(&view)


cdef bint _exceeds(const unsigned char* text, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t depth = 0
    cdef Py_ssize_t slashes
    cdef const unsigned char* quote
    cdef unsigned char c
    if n <= limit:
        return False  # each level needs at least one byte
    while i < n:
        c = text[i]
        if c == b'"':
            # Jump to the closing quote: the next quote not preceded by an odd run of backslashes.
            # memchr skips long string content (source code, reports) far faster than a byte loop.
            while True:
                quote = <const unsigned char*>memchr(text + i + 1, b'"', n - i - 1)
                if quote == NULL:
                    return False  # unterminated string: nothing after it can open a level
                i = quote - text
                slashes = 0
                while text[i - 1 - slashes] == b'\\':
                    slashes += 1
                if slashes % 2 == 0:
                    break
        elif c == b'[' or c == b'{':
            depth += 1
            if depth > limit:
                return True
        elif c == b']' or c == b'}':
            if depth > 0:
                depth -= 1
        i += 1
    return False
