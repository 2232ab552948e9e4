# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""Nesting depth of a JSON text, found by one linear byte scan without decoding or allocating.

Decoders recurse once per `[`/`{`; scanning first lets the server refuse a body nested too deeply with a
clear error instead of letting the decoder run out of stack.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr

cdef enum:
    # Openers are counted a block at a time (a loop the compiler vectorises) until the count passes the
    # limit; only then does the byte scan run. A block is small enough that a big body with many brackets
    # pays little for the count before its scan.
    BLOCK = 4096


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
    if type(data) is bytes:  # what the server passes: no buffer to acquire and release
        return _exceeds(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), limit)
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
    if n <= limit or _few_openers(text, n, limit):
        return False  # each level needs at least one byte, and one opener
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


cdef bint _few_openers(const unsigned char* text, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    """Whether `text` holds at most `limit` `[`/`{` bytes, strings included: then nothing nests deeper."""
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end
    cdef Py_ssize_t i
    cdef Py_ssize_t openers = 0
    while start < n:
        end = min(start + BLOCK, n)
        for i in range(start, end):
            openers += (text[i] == b'[') | (text[i] == b'{')
        if openers > limit:
            return False
        start = end
    return True
