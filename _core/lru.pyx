# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""Bounded least-recently-used map with O(1) get/put/pop, a runtime-resizable capacity and hit counters.

A dict maps each key to a node of an intrusive circular doubly-linked list ordered oldest -> newest.
The attributes and C methods are declared in qe_appliance/_core/lru.pxd, so other kernels call it in C.
"""

cimport cython


@cython.final
@cython.freelist(64)
cdef class _Node:
    pass


cdef inline void _unlink(_Node node) noexcept:
    node.prev.next = node.next
    node.next.prev = node.prev


@cython.final
cdef class LRUCache:
    """Holds at most `capacity` entries; putting one more evicts the least recently used.

    `get` counts a hit or a miss and makes a found entry the newest; `in`, `len` and `keys()` do
    neither, so tests and stats can look without disturbing the order.
    """

    def __cinit__(self, Py_ssize_t capacity=1000):
        if capacity < 0:
            raise ValueError(f"LRU capacity must be 0 or more, got {capacity}")
        self._map = {}
        self._root = _Node()
        self._root.prev = self._root
        self._root.next = self._root
        self._capacity = capacity

    def __dealloc__(self):
        if self._root is not None:
            self._break_ring()
            self._root.prev = None
            self._root.next = None

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, Py_ssize_t value) -> None:
        if value < 0:
            raise ValueError(f"LRU capacity must be 0 or more, got {value}")
        self._capacity = value
        self._evict_to(value)

    cdef void _link_newest(self, _Node node) noexcept:
        cdef _Node newest = self._root.prev
        node.prev = newest
        node.next = self._root
        newest.next = node
        self._root.prev = node

    cdef void _evict_to(self, Py_ssize_t size) except *:
        cdef _Node oldest
        while len(self._map) > size:
            oldest = self._root.next
            _unlink(oldest)
            del self._map[oldest.key]
            self.evictions += 1

    cpdef object get(self, object key, object default=None):
        """The value for `key` (now the newest entry), or `default`; counts a hit or a miss."""
        cdef object found = self._map.get(key)
        cdef _Node node
        if found is None:
            self.misses += 1
            return default
        node = <_Node>found
        self.hits += 1
        if node is not self._root.prev:
            _unlink(node)
            self._link_newest(node)
        return node.value

    cpdef object put(self, object key, object value):
        """Store `value` under `key` as the newest entry, evicting the oldest when full."""
        cdef object found
        cdef _Node node
        if self._capacity == 0:
            return None
        found = self._map.get(key)
        if found is not None:
            node = <_Node>found
            node.value = value
            _unlink(node)
            self._link_newest(node)
            return None
        self._evict_to(self._capacity - 1)
        node = _Node()
        node.key = key
        node.value = value
        self._map[key] = node
        self._link_newest(node)
        return None

    cpdef object pop(self, object key, object default=None):
        """Remove `key` and return its value, or `default` when absent; counts nothing."""
        cdef object found = self._map.pop(key, None)
        cdef _Node node
        if found is None:
            return default
        node = <_Node>found
        _unlink(node)
        return node.value

    cdef void _break_ring(self) noexcept:
        # Unlinking each node lets reference counting free it at once instead of leaving the
        # doubly-linked chain as cyclic garbage for the GC. The None test covers a ring the GC has
        # already cleared when the cache dies inside a collected cycle.
        cdef _Node node = self._root.next
        cdef _Node after
        while node is not None and node is not self._root:
            after = node.next
            node.prev = None
            node.next = None
            node = after

    cpdef object clear(self):
        """Drop every entry; the counters keep their totals."""
        self._break_ring()
        self._map.clear()
        self._root.prev = self._root
        self._root.next = self._root
        return None

    def keys(self) -> list:
        """Keys from the oldest to the newest (the eviction order)."""
        cdef list out = []
        cdef _Node node = self._root.next
        while node is not self._root:
            out.append(node.key)
            node = node.next
        return out

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, object key) -> bool:
        return key in self._map

    def __repr__(self) -> str:
        return (f"LRUCache(capacity={self._capacity}, size={len(self._map)}, hits={self.hits}, "
                f"misses={self.misses}, evictions={self.evictions})")
