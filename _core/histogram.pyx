# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Latency histogram: log-linear (HDR-style) buckets from 1 µs to 60 s with under 1% relative error, O(1)
record, percentiles, merge, Prometheus `le` counts, and a ring of per-second windows for "the last N seconds".
"""

cimport cython
from libc.math cimport INFINITY, ceil, floor, ldexp
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef enum:
    # Every power of two is split into SUB linear buckets, so a bucket is at most 1/64 of its lower edge
    # wide and its midpoint is within 1/128 (0.78%) of any value in it: the "about 1%" percentiles promise.
    SUB_BITS = 6
    SUB = 64
    # 1 µs lies in [2^-20, 2^-19) and 60 s in [2^5, 2^6): 26 octaves.
    MIN_EXP = -20
    OCTAVES = 26
    BUCKETS = OCTAVES * SUB

LOWEST = 1e-6
HIGHEST = 60.0
RELATIVE_ERROR = 1.0 / 128.0
cdef double _LOW = 1e-6
cdef double _HIGH = 60.0


# to_bytes: "HDR1", count, total, min, max, first bucket, number of buckets (8 bytes each), then the counts.
FORMAT = b"HDR1"
cdef enum:
    _HEADER = 52


cdef inline void _put_u64(unsigned char *at, uint64_t value) noexcept nogil:
    cdef int i
    for i in range(8):
        at[i] = <unsigned char>(value >> (8 * i))


cdef inline uint64_t _get_u64(const unsigned char *at) noexcept nogil:
    cdef uint64_t value = 0
    cdef int i
    for i in range(8):
        value |= (<uint64_t>at[i]) << (8 * i)
    return value


cdef inline void _put_f64(unsigned char *at, double value) noexcept nogil:
    cdef uint64_t bits
    memcpy(&bits, &value, 8)
    _put_u64(at, bits)


cdef inline double _get_f64(const unsigned char *at) noexcept nogil:
    cdef uint64_t bits = _get_u64(at)
    cdef double value
    memcpy(&value, &bits, 8)
    return value


cdef struct Span:
    # What a set of counts holds besides the counts themselves. Buckets lo..hi are the only ones that
    # can be non-zero (lo > hi when empty), so scans, merges and window clears touch only those.
    int64_t epoch          # which window this is (seconds since boot // window_s); -1 = never used
    uint64_t count
    double total
    double min
    double max
    int lo
    int hi


cdef inline void _clear_span(Span *span) noexcept nogil:
    span.count = 0
    span.total = 0.0
    span.min = 0.0
    span.max = 0.0
    span.lo = BUCKETS
    span.hi = -1


cdef inline void _note(Span *span, double value, int index) noexcept nogil:
    if span.count == 0 or value < span.min:
        span.min = value
    if value > span.max:
        span.max = value
    span.count += 1
    span.total += value
    if index < span.lo:
        span.lo = index
    if index > span.hi:
        span.hi = index


cdef inline void _absorb(Span *into, const Span *other) noexcept nogil:
    if other.count == 0:
        return
    if into.count == 0 or other.min < into.min:
        into.min = other.min
    if other.max > into.max:
        into.max = other.max
    into.count += other.count
    into.total += other.total
    if other.lo < into.lo:
        into.lo = other.lo
    if other.hi > into.hi:
        into.hi = other.hi


cdef inline int _index(double seconds) noexcept nogil:
    """The bucket of a value: its binary exponent picks the octave, the top mantissa bits the sub-bucket."""
    cdef uint64_t bits
    if seconds < _LOW:
        seconds = _LOW
    elif seconds > _HIGH:
        seconds = _HIGH
    memcpy(&bits, &seconds, 8)
    return (<int>((bits >> 52) & 0x7FF) - 1023 - MIN_EXP) * SUB + <int>((bits >> (52 - SUB_BITS)) & (SUB - 1))


cdef inline double _midpoint(int index) noexcept nogil:
    return ldexp(1.0 + ((index & (SUB - 1)) + 0.5) / SUB, (index >> SUB_BITS) + MIN_EXP)


cdef inline double _sanitise(double seconds) noexcept nogil:
    # A negative or NaN duration is a caller's clock glitch; it counts as an instant rather than vanishing.
    if not seconds >= 0.0:
        return 0.0
    if seconds == INFINITY:
        return _HIGH
    return seconds


cdef inline int64_t _clock_epoch(int64_t window_s) noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec // window_s


@cython.final
cdef class Histogram:
    """Counts of durations in seconds. Values outside 1 µs .. 60 s land in the edge buckets, while `total`,
    `min` and `max` keep the values themselves.

    With `windows` > 0 every value is also counted in the window of the current `window_s` seconds
    (CLOCK_MONOTONIC), and `recent(n)` merges the windows of the last n seconds. Not thread-safe: record
    from one thread (the event loop).
    """

    cdef uint64_t *_counts
    cdef Span _all
    cdef int64_t _window_s
    cdef Py_ssize_t _windows
    cdef Span *_spans
    # Window counts bucket-major (bucket i of window w at i * windows + w), allocated by the first record.
    # Latencies keep to a few octaves, so the ring's resident pages are those few buckets' rows,
    # whatever the number of windows; window-major would touch a page in every window.
    cdef uint32_t *_ring

    def __cinit__(self, int window_s=1, int windows=60):
        # Allocation lives here rather than in __init__, which Python code could call a second time.
        if window_s < 1:
            raise ValueError(f"window_s must be 1 or more seconds, got {window_s}")
        if windows < 0:
            raise ValueError(f"windows must be 0 (no ring) or more, got {windows}")
        self._window_s = window_s
        self._windows = windows
        self._counts = <uint64_t *>calloc(BUCKETS, sizeof(uint64_t))
        self._spans = <Span *>calloc(windows or 1, sizeof(Span))
        if self._counts == NULL or self._spans == NULL:
            raise MemoryError()
        _clear_span(&self._all)
        for slot in range(windows):
            _clear_span(&self._spans[slot])
            self._spans[slot].epoch = -1

    def __dealloc__(self):
        free(self._counts)
        free(self._spans)
        free(self._ring)

    # ---- recording ---------------------------------------------------------------------------------

    def record(self, double seconds) -> None:
        """Count one duration; O(1)."""
        cdef int64_t epoch = _clock_epoch(self._window_s) if self._windows else 0
        self._record(_sanitise(seconds), epoch)

    def _record_at(self, double seconds, double now) -> None:
        """`record` as if the monotonic clock read `now` seconds (tests drive the windows with this)."""
        self._record(_sanitise(seconds), self._epoch_of(now))

    cdef inline int _record(self, double value, int64_t epoch) except -1:
        cdef int index = _index(value)
        cdef Span *span
        self._counts[index] += 1
        _note(&self._all, value, index)
        if self._windows == 0:
            return 0
        if self._ring == NULL:
            self._allocate_ring()
        span = self._claim(epoch)
        if span != NULL:
            self._ring[index * self._windows + (span - self._spans)] += 1
            _note(span, value, index)
        return 0

    cdef int _allocate_ring(self) except -1:
        self._ring = <uint32_t *>calloc(self._windows * BUCKETS, sizeof(uint32_t))
        if self._ring == NULL:
            raise MemoryError()
        return 0

    cdef Span *_claim(self, int64_t epoch) noexcept:
        """The window for `epoch`, emptied first if it holds an older one; NULL if it holds a newer one."""
        cdef Py_ssize_t slot = epoch % self._windows
        cdef Span *span = &self._spans[slot]
        cdef int index
        if span.epoch == epoch:
            return span
        if span.epoch > epoch:
            return NULL
        for index in range(span.lo, span.hi + 1):
            self._ring[index * self._windows + slot] = 0
        _clear_span(span)
        span.epoch = epoch
        return span

    cdef int64_t _epoch_of(self, double now) except? -1:
        if not 0.0 <= now < 1e15:
            raise ValueError(f"now must be a monotonic time in seconds (0 or more), got {now}")
        return <int64_t>floor(now / self._window_s)

    # ---- reading -----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._all.count

    @property
    def total(self) -> float:
        """Sum of the recorded seconds."""
        return self._all.total

    @property
    def min(self) -> float:
        return self._all.min

    @property
    def max(self) -> float:
        return self._all.max

    @property
    def window_s(self) -> int:
        return self._window_s

    @property
    def windows(self) -> int:
        return self._windows

    def percentile(self, double q) -> float:
        """The q-th percentile (0..100) in seconds: nearest rank, within 1% of the exact one; 0.0 if empty."""
        cdef uint64_t rank, seen = 0
        cdef double exact
        cdef int index
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be between 0 and 100, got {q}")
        if self._all.count == 0:
            return 0.0
        exact = q * self._all.count / 100.0
        # q * count / 100 in binary floating point can land a hair above a whole rank (99.9 * 1000 / 100
        # = 999.0000000000001); such a hair is rounding, not a request for the next sample.
        rank = <uint64_t>ceil(exact - exact * 1e-12)
        if rank <= 1:
            return self._all.min
        if rank >= self._all.count:
            return self._all.max
        for index in range(self._all.lo, self._all.hi + 1):
            seen += self._counts[index]
            if seen >= rank:
                return min(max(_midpoint(index), self._all.min), self._all.max)
        return self._all.max

    def cumulative(self, bounds) -> list:
        """For each bound (seconds, in increasing order) how many values are at or below it: Prometheus
        `le` buckets. A value within 1% above a bound may share its bucket and then counts as below it."""
        cdef list out = []
        cdef uint64_t seen = 0
        cdef int index = self._all.lo, limit
        cdef double bound, previous = -INFINITY
        for item in bounds:
            bound = item
            if not bound >= previous:
                raise ValueError(f"bounds must be numbers in increasing order; {item!r} follows {previous!r}")
            previous = bound
            limit = -1 if bound < _LOW else BUCKETS - 1 if bound >= _HIGH else _index(bound)
            while index <= limit and index <= self._all.hi:
                seen += self._counts[index]
                index += 1
            out.append(seen)
        return out

    # ---- combining ---------------------------------------------------------------------------------

    def merge(self, Histogram other not None) -> None:
        """Add `other`'s values; its windows too when both keep windows of the same width."""
        cdef Py_ssize_t slot, our_slot
        cdef int index
        cdef Span *theirs
        cdef Span *ours
        if other is self:
            raise ValueError("a histogram cannot be merged into itself")
        if other._ring != NULL and self._windows and other._window_s != self._window_s:
            raise ValueError(
                f"cannot merge windows of {other._window_s} s into windows of {self._window_s} s; "
                "merge other.recent(n) instead"
            )
        for index in range(other._all.lo, other._all.hi + 1):
            self._counts[index] += other._counts[index]
        _absorb(&self._all, &other._all)
        if other._ring == NULL or self._windows == 0:
            return
        if self._ring == NULL:
            self._allocate_ring()
        for slot in range(other._windows):
            theirs = &other._spans[slot]
            if theirs.count == 0:
                continue
            ours = self._claim(theirs.epoch)
            if ours == NULL:
                continue
            our_slot = ours - self._spans
            for index in range(theirs.lo, theirs.hi + 1):
                self._ring[index * self._windows + our_slot] += other._ring[index * other._windows + slot]
            _absorb(ours, theirs)

    def to_bytes(self) -> bytes:
        """Every value recorded (not the windows) as bytes for another process to `from_bytes` and merge:
        a header (FORMAT, count, total, min, max, first and last bucket) and the counts of the buckets from
        the first non-empty one to the last, little-endian."""
        cdef int width = self._all.hi - self._all.lo + 1 if self._all.count else 0
        cdef bytearray out = bytearray(_HEADER + width * 8)
        cdef unsigned char *data = out
        cdef int index
        memcpy(data, <const char *>FORMAT, 4)
        _put_u64(data + 4, self._all.count)
        _put_f64(data + 12, self._all.total)
        _put_f64(data + 20, self._all.min)
        _put_f64(data + 28, self._all.max)
        _put_u64(data + 36, <uint64_t>(self._all.lo if width else 0))
        _put_u64(data + 44, <uint64_t>width)
        for index in range(width):
            _put_u64(data + _HEADER + index * 8, self._counts[self._all.lo + index])
        return bytes(out)

    @staticmethod
    def from_bytes(const unsigned char[:] data not None) -> Histogram:
        """A histogram (no windows) of what `to_bytes` wrote; ValueError if `data` is not such bytes."""
        cdef Histogram out = Histogram(1, 0)
        cdef Py_ssize_t size = data.shape[0]
        cdef uint64_t lo, width, seen = 0, count
        cdef Py_ssize_t index
        if size < _HEADER or data[0] != b'H' or data[1] != b'D' or data[2] != b'R' or data[3] != b'1':
            raise ValueError("not a serialized histogram (it must start with the HDR1 header of to_bytes)")
        lo = _get_u64(&data[36])
        width = _get_u64(&data[44])
        if lo > BUCKETS or width > BUCKETS - lo or <uint64_t>size != _HEADER + width * 8:
            raise ValueError(f"a serialized histogram of {size} bytes cannot hold buckets {lo} .. {lo} + {width}")
        for index in range(<Py_ssize_t>width):
            count = _get_u64(&data[_HEADER + index * 8])
            out._counts[lo + index] = count
            seen += count
        out._all.count = _get_u64(&data[4])
        if seen != out._all.count:
            raise ValueError(f"a serialized histogram's buckets hold {seen} values but its header says "
                             f"{out._all.count}")
        out._all.total = _get_f64(&data[12])
        out._all.min = _get_f64(&data[20])
        out._all.max = _get_f64(&data[28])
        if width:
            out._all.lo = <int>lo
            out._all.hi = <int>(lo + width - 1)
        return out

    def recent(self, double seconds) -> Histogram:
        """A new histogram (no windows) of what was recorded in the last `seconds` (the current window
        included), at most `window_s * windows` seconds back."""
        return self._recent(seconds, _clock_epoch(self._window_s))

    def _recent_at(self, double seconds, double now) -> Histogram:
        """`recent` as if the monotonic clock read `now` seconds."""
        return self._recent(seconds, self._epoch_of(now))

    cdef Histogram _recent(self, double seconds, int64_t epoch):
        cdef Histogram out
        cdef Span *span
        cdef int64_t span_count
        cdef Py_ssize_t slot, taken = 0, k
        cdef Py_ssize_t *slots
        cdef uint32_t *row
        cdef uint64_t sum
        cdef int index
        if self._windows == 0:
            raise ValueError("this histogram keeps no windows (windows=0); create it with windows > 0")
        if not seconds > 0.0:
            raise ValueError(f"seconds must be more than 0, got {seconds}")
        if seconds >= <double>self._window_s * self._windows:
            span_count = self._windows
        else:
            span_count = <int64_t>ceil(seconds / self._window_s)
        out = Histogram(self._window_s, 0)
        if self._ring == NULL:
            return out
        slots = <Py_ssize_t *>malloc(self._windows * sizeof(Py_ssize_t))
        if slots == NULL:
            raise MemoryError()
        for slot in range(self._windows):
            span = &self._spans[slot]
            if span.count and epoch - span_count < span.epoch <= epoch:
                slots[taken] = slot
                taken += 1
                _absorb(&out._all, span)
        # A window's column is zero outside its own lo..hi, so summing rows over the union range is exact,
        # and each row is contiguous.
        for index in range(out._all.lo, out._all.hi + 1):
            row = &self._ring[index * self._windows]
            sum = 0
            for k in range(taken):
                sum += row[slots[k]]
            out._counts[index] = sum
        free(slots)
        return out

    def reset(self) -> None:
        """Forget every value, windows included."""
        memset(self._counts, 0, BUCKETS * sizeof(uint64_t))
        _clear_span(&self._all)
        for slot in range(self._windows):
            _clear_span(&self._spans[slot])
            self._spans[slot].epoch = -1
        free(self._ring)
        self._ring = NULL

    def __repr__(self) -> str:
        return (
            f"Histogram(count={self._all.count}, p50={self.percentile(50):.6g}s, "
            f"p99={self.percentile(99):.6g}s, max={self._all.max:.6g}s, "
            f"windows={self._windows}x{self._window_s}s)"
        )
