# C-level interface of lru.pyx, for kernels that cimport the cache (registry.pyx) instead of calling it
# through Python.

cimport cython


@cython.final
cdef class _Node:
    cdef _Node prev
    cdef _Node next
    cdef object key
    cdef object value


@cython.final
cdef class LRUCache:
    cdef dict _map
    # Sentinel of a circular list: _root.next is the oldest entry, _root.prev the newest.
    cdef _Node _root
    cdef Py_ssize_t _capacity
    cdef readonly unsigned long long hits
    cdef readonly unsigned long long misses
    cdef readonly unsigned long long evictions

    cdef void _link_newest(self, _Node node) noexcept
    cdef void _evict_to(self, Py_ssize_t size) except *
    cdef void _break_ring(self) noexcept
    cpdef object get(self, object key, object default=*)
    cpdef object put(self, object key, object value)
    cpdef object pop(self, object key, object default=*)
    cpdef object clear(self)
