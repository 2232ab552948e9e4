# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""Tool index kernel: exact-name hash index, category index, LRU of fuzzy-resolved names, lookup counters.

Knows nothing of ToolSpec or rapidfuzz: a tool is any object with `.name` and `.category`, and a name
that is not exact goes to a Python `fuzzy` callable (the fuzzy matcher lives in the Python layer).
The LRU is cimported (qe_appliance/_core/lru.pxd), so a lookup reaches it in C, not through Python.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from qe_appliance._core.lru cimport LRUCache

cdef enum:
    # A clock read costs more than a lookup that hits, so one such lookup in SAMPLE is timed and counts
    # SAMPLE times; lookups that reach `fuzzy` are always timed. A power of two: the test is a mask.
    SAMPLE = 64


cdef inline unsigned long long _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <unsigned long long>ts.tv_sec * 1000000000ULL + <unsigned long long>ts.tv_nsec


@cython.final
cdef class ToolIndex:
    """Resolves a tool name: the exact index, then the LRU of names resolved by `fuzzy`, then `fuzzy(name)`.

    `resolve` returns a `(tool, resolved_by_fuzzy)` tuple. Those tuples are built once (at
    registration for exact names, at the first resolution for others) and handed out again, so a hit
    allocates nothing. An exact name never enters the LRU: the index answers it in one probe, and the
    cache keeps its room for the names that cost a fuzzy match. `fuzzy(name)` returns the tool a non-exact name stands for, which is then
    cached, or raises to report that the name is unknown; such a miss is counted and never cached.
    `total_ns` estimates the time spent resolving: see SAMPLE.
    """

    cdef dict _exact
    cdef dict _by_category
    cdef readonly tuple tools
    cdef readonly LRUCache cache
    cdef readonly bint cache_enabled
    cdef public object fuzzy
    cdef readonly unsigned long long lookups
    cdef readonly unsigned long long exact_hits
    cdef readonly unsigned long long cache_hits
    cdef readonly unsigned long long fuzzy_resolutions
    cdef readonly unsigned long long misses
    cdef readonly unsigned long long total_ns

    def __init__(self, tools, fuzzy, *, Py_ssize_t cache_size=1000, bint cache_enabled=True):
        cdef dict grouped = {}
        self._exact = {}
        for tool in tools:
            name = tool.name
            if not isinstance(name, str):
                raise TypeError(f"tool name must be a str, got {name!r}")
            if name in self._exact:
                raise ValueError(f"tool {name!r} is registered twice; give each tool a unique name")
            self._exact[name] = (tool, False)
            grouped.setdefault(tool.category, []).append(tool)
        self.tools = tuple([hit[0] for hit in self._exact.values()])
        self._by_category = {category: tuple(members) for category, members in grouped.items()}
        self.cache = LRUCache(cache_size)
        self.cache_enabled = cache_enabled
        self.fuzzy = fuzzy

    cpdef tuple resolve(self, str name):
        """`(tool, resolved_by_fuzzy)` for `name`; whatever `fuzzy` raises propagates."""
        cdef bint timed = (self.lookups & (SAMPLE - 1)) == 0
        cdef unsigned long long start = _now_ns() if timed else 0
        cdef PyObject *found
        cdef object hit
        self.lookups += 1
        # Borrowed reference, no None default to build and test: the cheapest dict probe there is.
        found = PyDict_GetItem(self._exact, name)
        if found != NULL:
            self.exact_hits += 1
            if timed:
                self.total_ns += (_now_ns() - start) * SAMPLE
            return <tuple><object>found
        if self.cache_enabled:
            hit = self.cache.get(name, None)
            if hit is not None:
                self.cache_hits += 1
                if timed:
                    self.total_ns += (_now_ns() - start) * SAMPLE
                return <tuple>hit
        if not timed:
            start = _now_ns()
        try:
            hit = (self.fuzzy(name), True)
        except BaseException:
            self.misses += 1
            self.total_ns += _now_ns() - start
            raise
        self.fuzzy_resolutions += 1
        if self.cache_enabled:
            self.cache.put(name, hit)
        self.total_ns += _now_ns() - start
        return <tuple>hit

    def get(self, str name):
        """The tool registered under exactly `name`, or None; touches neither cache nor counters."""
        cdef object hit = self._exact.get(name)
        return None if hit is None else hit[0]

    def by_category(self, category) -> tuple:
        """Tools of `category` in registration order (empty for an unknown category)."""
        return self._by_category.get(category, ())

    def categories(self) -> tuple:
        """Category names in the order their first tool was registered."""
        return tuple(self._by_category)

    def configure(self, *, bint cache_enabled, Py_ssize_t cache_size):
        """Switch the cache on or off and resize it; shrinking evicts the least recently used names."""
        self.cache.capacity = cache_size
        if not cache_enabled:
            # A disabled cache must not serve stale resolutions when it is switched back on.
            self.cache.clear()
        self.cache_enabled = cache_enabled
