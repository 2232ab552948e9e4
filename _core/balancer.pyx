# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Agent picker for fleet requests: least-connections, response-time or round-robin over the agents
that serve a category, with capacity awareness and outlier ejection of failing agents.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport isfinite
from libc.string cimport memmove
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

import msgspec

STRATEGIES = ("least-connections", "response-time", "round-robin")


# Reports are msgspec Structs: typed attributes for the Python that reads them, and camelCase only where
# they are encoded (msgspec.to_builtins / json at the status and admin edges).
class AgentLoad(msgspec.Struct, rename="camel", frozen=True, gc=False):
    """One agent as the balancer sees it at `now`."""

    id: str
    capacity: int
    in_flight: int
    load: float            # in_flight / capacity
    ewma_ms: float | None  # None until a call has completed
    completed: int
    failed: int
    consecutive_failures: int
    ejections: int
    ejected: bool
    ejected_for_s: float   # 0.0 unless ejected
    available: bool
    categories: tuple[str, ...]


class BalancerStats(msgspec.Struct, rename="camel", frozen=True, gc=False):
    """Totals since start and the settings in force."""

    strategy: str
    capacity_aware: bool
    picks: int
    no_candidate: int
    ejections: int
    agents: int

cdef enum:
    # Indexes into STRATEGIES.
    LEAST_CONNECTIONS = 0
    RESPONSE_TIME = 1
    ROUND_ROBIN = 2
    # Above this many agents in a category least-connections samples two of them instead of scanning all.
    P2C_THRESHOLD = 16
    # Random draws power-of-two-choices spends looking for two pickable agents before it scans instead;
    # a mostly saturated fleet then still finds its last free agent.
    P2C_DRAWS = 8

# A latency of 0 would give an infinite weight; nothing answers faster than a microsecond anyway.
cdef double MIN_LATENCY_S = 1e-6


cdef struct Agent:
    int capacity
    int in_flight
    int consecutive_failures
    int ejections
    bint available
    bint has_latency
    double ewma_s
    double weight          # 1 / ewma_s, kept so response-time picks never divide
    double ejected_until
    unsigned long long completed
    unsigned long long failed


cdef inline unsigned long long _splitmix64(unsigned long long *state) noexcept nogil:
    state[0] += 0x9E3779B97F4A7C15ULL
    cdef unsigned long long z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


@cython.final
cdef class _Group:
    """The slots of the agents serving one category, in the order they were added."""

    cdef int *slots
    cdef Py_ssize_t n
    cdef Py_ssize_t cursor  # round-robin: where the next scan starts

    def __dealloc__(self):
        PyMem_Free(self.slots)


@cython.final
cdef class Balancer:
    """Picks the agent for each fleet request and keeps the per-agent counters the picks rely on.

    Every `pick` must be paired with one `finish` (the call completed or failed) or one `release`
    (it was cancelled). Time is whatever clock the caller passes as `now` (seconds, monotonic).
    """

    cdef Agent *_agents
    cdef Py_ssize_t _n
    cdef Py_ssize_t _allocated
    # Scratch for response-time picks: pickable slots, filled and read within one pick.
    cdef int *_scratch
    cdef list _ids
    cdef list _categories
    cdef dict _slot_of
    # category -> _Group; rebuilt by the first pick after add/remove marks it stale.
    cdef dict _groups
    cdef bint _stale
    cdef int _strategy
    cdef public bint capacity_aware
    cdef int _failures_to_eject
    cdef double _base_ejection_s
    cdef double _max_ejection_s
    cdef double _alpha
    cdef unsigned long long _rng
    cdef unsigned long long _picks
    cdef unsigned long long _no_candidate
    cdef unsigned long long _ejections

    def __cinit__(self, *args, **kwargs):
        self._ids = []
        self._categories = []
        self._slot_of = {}
        self._groups = {}

    def __init__(self, str strategy="least-connections", *, bint capacity_aware=True,
                 int failures_to_eject=5, double base_ejection_s=10.0, double max_ejection_s=300.0,
                 double ewma_alpha=0.2, seed=None):
        cdef timespec ts
        cdef unsigned long long mix
        if failures_to_eject < 1:
            raise ValueError(f"failures_to_eject must be 1 or more, got {failures_to_eject}")
        if not (isfinite(base_ejection_s) and base_ejection_s > 0):
            raise ValueError(f"base_ejection_s must be a positive number of seconds, got {base_ejection_s}")
        if not (isfinite(max_ejection_s) and max_ejection_s >= base_ejection_s):
            raise ValueError(
                f"max_ejection_s must be at least base_ejection_s ({base_ejection_s}), got {max_ejection_s}"
            )
        if not (0.0 < ewma_alpha <= 1.0):
            raise ValueError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed must be an int (or None to seed from the clock), got {seed!r}")
        self.strategy = strategy
        self.capacity_aware = capacity_aware
        self._failures_to_eject = failures_to_eject
        self._base_ejection_s = base_ejection_s
        self._max_ejection_s = max_ejection_s
        self._alpha = ewma_alpha
        if seed is None:
            clock_gettime(CLOCK_REALTIME, &ts)
            mix = <unsigned long long>ts.tv_sec * 1000000000ULL + <unsigned long long>ts.tv_nsec
            clock_gettime(CLOCK_MONOTONIC, &ts)
            mix ^= (<unsigned long long>ts.tv_nsec << 32) ^ <unsigned long long><size_t><void *>self
        else:
            mix = <unsigned long long>(seed & 0xFFFFFFFFFFFFFFFF)
        # xorshift64* must not start from 0; splitmix spreads similar seeds apart.
        self._rng = _splitmix64(&mix) | 1

    def __dealloc__(self):
        PyMem_Free(self._agents)
        PyMem_Free(self._scratch)

    # ---- configuration ---------------------------------------------------------------------------

    @property
    def strategy(self) -> str:
        return STRATEGIES[self._strategy]

    @strategy.setter
    def strategy(self, value) -> None:
        if value not in STRATEGIES:
            raise ValueError(f"unknown balancer strategy {value!r}; use one of: {', '.join(STRATEGIES)}")
        self._strategy = STRATEGIES.index(value)

    # ---- membership --------------------------------------------------------------------------------

    def add(self, str agent_id, int capacity, categories) -> None:
        """Register an available agent with room for `capacity` requests serving `categories`."""
        cdef Py_ssize_t size
        cdef void *grown
        cdef Agent *agent
        if isinstance(categories, (str, bytes)):
            raise TypeError(
                f"categories of agent {agent_id!r} must be a list of category names, not the single "
                f"string {categories!r}; wrap it in a list"
            )
        if agent_id in self._slot_of:
            raise ValueError(f"agent {agent_id!r} is already registered; remove it first or use a new id")
        if capacity < 1:
            raise ValueError(f"agent {agent_id!r} needs a capacity of 1 or more, got {capacity}")
        served = tuple(dict.fromkeys(categories))
        for category in served:
            if not isinstance(category, str):
                raise TypeError(f"agent {agent_id!r}: category names must be str, got {category!r}")
        if self._n == self._allocated:
            size = max(8, self._allocated * 2)
            grown = PyMem_Realloc(self._agents, size * sizeof(Agent))
            if grown == NULL:
                raise MemoryError()
            self._agents = <Agent *>grown
            grown = PyMem_Realloc(self._scratch, size * sizeof(int))
            if grown == NULL:
                raise MemoryError()
            self._scratch = <int *>grown
            self._allocated = size
        agent = &self._agents[self._n]
        agent.capacity = capacity
        agent.in_flight = 0
        agent.consecutive_failures = 0
        agent.ejections = 0
        agent.available = True
        agent.has_latency = False
        agent.ewma_s = 0.0
        agent.weight = 0.0
        agent.ejected_until = 0.0
        agent.completed = 0
        agent.failed = 0
        self._slot_of[agent_id] = self._n
        self._ids.append(agent_id)
        self._categories.append(served)
        self._n += 1
        self._stale = True

    def remove(self, str agent_id) -> None:
        """Forget an agent (no-op when absent); its outstanding picks need no finish/release."""
        cdef Py_ssize_t slot
        cdef Py_ssize_t later
        found = self._slot_of.pop(agent_id, None)
        if found is None:
            return
        slot = found
        # Shifting (not swapping in the last agent) keeps slots in the order agents were added,
        # which is the round-robin order and the order agents() reports.
        memmove(&self._agents[slot], &self._agents[slot + 1], (self._n - slot - 1) * sizeof(Agent))
        del self._ids[slot]
        del self._categories[slot]
        self._n -= 1
        for later in range(slot, self._n):
            self._slot_of[self._ids[later]] = later
        self._stale = True

    def set_available(self, str agent_id, bint available) -> None:
        """False while an agent is starting, draining or dead: it is never picked until set back."""
        self._agents[self._slot(agent_id)].available = available

    cdef Py_ssize_t _slot(self, str agent_id) except -1:
        found = self._slot_of.get(agent_id)
        if found is None:
            raise KeyError(f"unknown agent {agent_id!r}; add() it to the balancer first")
        return found

    cdef void _rebuild_groups(self) except *:
        cdef dict members = {}
        cdef dict groups = {}
        cdef _Group group
        cdef list slots
        cdef Py_ssize_t slot
        cdef Py_ssize_t i
        for slot in range(self._n):
            for category in <tuple>self._categories[slot]:
                members.setdefault(category, []).append(slot)
        for category, slots in members.items():
            group = _Group()
            group.slots = <int *>PyMem_Malloc(len(slots) * sizeof(int))
            if group.slots == NULL:
                raise MemoryError()
            for i in range(len(slots)):
                group.slots[i] = slots[i]
            group.n = len(slots)
            # Round-robin carries on roughly where it was instead of favouring the first agent.
            old = self._groups.get(category)
            if old is not None:
                group.cursor = (<_Group>old).cursor % group.n
            groups[category] = group
        self._groups = groups
        self._stale = False

    cdef inline _Group _group(self, object category):
        if self._stale:
            self._rebuild_groups()
        return self._groups.get(category)

    # ---- picking ---------------------------------------------------------------------------------

    cdef inline unsigned long long _next(self) noexcept:
        # xorshift64*: a few cycles, good enough for load spreading (not for secrets).
        cdef unsigned long long x = self._rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self._rng = x
        return x * 0x2545F4914F6CDD1DULL

    cdef inline Py_ssize_t _below(self, Py_ssize_t bound) noexcept:
        """A random integer in [0, bound), bound < 2**32."""
        return <Py_ssize_t>(((self._next() >> 32) * <unsigned long long>bound) >> 32)

    cdef inline bint _pickable(self, Agent *agent, double now) noexcept:
        return (agent.available and agent.ejected_until <= now
                and (not self.capacity_aware or agent.in_flight < agent.capacity))

    cdef inline int _compare_load(self, Agent *a, Agent *b) noexcept:
        """Negative when `a` is less loaded than `b`, 0 when equally loaded, positive otherwise."""
        cdef long long left, right
        if self.capacity_aware:
            # in_flight / capacity compared by cross-multiplying, so no rounding makes false ties.
            left = <long long>a.in_flight * b.capacity
            right = <long long>b.in_flight * a.capacity
        else:
            left = a.in_flight
            right = b.in_flight
        return (left > right) - (left < right)

    cdef int _least_loaded_scan(self, _Group group, double now) noexcept:
        cdef int best = -1
        cdef int slot
        cdef int order
        cdef Py_ssize_t ties = 0
        cdef Py_ssize_t i
        for i in range(group.n):
            slot = group.slots[i]
            if not self._pickable(&self._agents[slot], now):
                continue
            if best < 0:
                best = slot
                ties = 1
                continue
            order = self._compare_load(&self._agents[slot], &self._agents[best])
            if order < 0:
                best = slot
                ties = 1
            elif order == 0:
                # Reservoir sampling: each of the k tied agents ends up chosen with probability 1/k.
                ties += 1
                if self._below(ties) == 0:
                    best = slot
        return best

    cdef int _least_connections(self, _Group group, double now) noexcept:
        cdef int first = -1
        cdef int slot
        cdef int order
        if group.n > P2C_THRESHOLD:
            for _ in range(P2C_DRAWS):
                slot = group.slots[self._below(group.n)]
                if slot == first or not self._pickable(&self._agents[slot], now):
                    continue
                if first < 0:
                    first = slot
                    continue
                order = self._compare_load(&self._agents[slot], &self._agents[first])
                if order < 0 or (order == 0 and self._next() >> 63):
                    return slot
                return first
        return self._least_loaded_scan(group, now)

    cdef int _response_time(self, _Group group, double now) noexcept:
        cdef int *pickable = self._scratch
        cdef Py_ssize_t count = 0
        cdef Py_ssize_t unmeasured = 0
        cdef Py_ssize_t i
        cdef int slot
        cdef Agent *agent
        cdef double known = 0.0
        cdef double best = 0.0
        cdef double unmeasured_weight
        cdef double target
        for i in range(group.n):
            slot = group.slots[i]
            agent = &self._agents[slot]
            if not self._pickable(agent, now):
                continue
            pickable[count] = slot
            count += 1
            if agent.has_latency:
                known += agent.weight
                if agent.weight > best:
                    best = agent.weight
            else:
                unmeasured += 1
        if count == 0:
            return -1
        # Agents without a latency yet get the best weight seen, so a new agent gets traffic at once.
        unmeasured_weight = best if best > 0.0 else 1.0
        target = (self._next() >> 11) * (1.0 / 9007199254740992.0) * (known + unmeasured * unmeasured_weight)
        for i in range(count - 1):
            agent = &self._agents[pickable[i]]
            target -= agent.weight if agent.has_latency else unmeasured_weight
            if target < 0.0:
                return pickable[i]
        return pickable[count - 1]

    cdef int _round_robin(self, _Group group, double now) noexcept:
        cdef Py_ssize_t step
        cdef Py_ssize_t i
        cdef int slot
        for step in range(group.n):
            i = (group.cursor + step) % group.n
            slot = group.slots[i]
            if self._pickable(&self._agents[slot], now):
                group.cursor = (i + 1) % group.n
                return slot
        return -1

    def pick(self, category, double now):
        """Id of the agent that takes the next `category` request (now counted in flight), or None
        when no agent serving `category` is available, un-ejected and (capacity-aware) below capacity.
        """
        cdef _Group group = self._group(category)
        cdef int slot
        if group is None:
            self._no_candidate += 1
            return None
        if self._strategy == LEAST_CONNECTIONS:
            slot = self._least_connections(group, now)
        elif self._strategy == RESPONSE_TIME:
            slot = self._response_time(group, now)
        else:
            slot = self._round_robin(group, now)
        if slot < 0:
            self._no_candidate += 1
            return None
        self._agents[slot].in_flight += 1
        self._picks += 1
        return self._ids[slot]

    # ---- results -----------------------------------------------------------------------------------

    def release(self, str agent_id) -> None:
        """Undo a pick whose call was cancelled: frees the slot, records no result."""
        found = self._slot_of.get(agent_id)
        if found is not None and self._agents[<Py_ssize_t>found].in_flight > 0:
            self._agents[<Py_ssize_t>found].in_flight -= 1

    def finish(self, str agent_id, double latency_s, bint ok, double now) -> None:
        """Record the outcome of a picked call; ejects the agent after too many failures in a row.

        An id no longer registered (removed while its call ran) is ignored.
        """
        cdef Agent *agent
        cdef Py_ssize_t slot
        cdef double backoff
        if not (isfinite(latency_s) and latency_s >= 0.0):
            raise ValueError(f"latency_s must be a finite number of seconds, 0 or more, got {latency_s}")
        found = self._slot_of.get(agent_id)
        if found is None:
            return
        slot = found
        agent = &self._agents[slot]
        if agent.in_flight > 0:
            agent.in_flight -= 1
        if ok:
            agent.completed += 1
            agent.consecutive_failures = 0
            if agent.has_latency:
                agent.ewma_s += self._alpha * (latency_s - agent.ewma_s)
            else:
                agent.ewma_s = latency_s
                agent.has_latency = True
            agent.weight = 1.0 / max(agent.ewma_s, MIN_LATENCY_S)
            return
        agent.failed += 1
        # Failures of calls that were already running when the agent was ejected belong to the
        # incident that ejected it; counting them would re-eject it the moment it comes back.
        if agent.ejected_until > now:
            return
        agent.consecutive_failures += 1
        if agent.consecutive_failures >= self._failures_to_eject and self._may_eject(slot, now):
            backoff = min(self._base_ejection_s * 2.0 ** agent.ejections, self._max_ejection_s)
            agent.ejected_until = now + backoff
            agent.ejections += 1
            agent.consecutive_failures = 0
            self._ejections += 1

    cdef bint _may_eject(self, Py_ssize_t slot, double now) except -1:
        """Whether ejecting `slot` keeps at most half the fleet ejected, and keeps at least half of,
        and one available agent in, every category it serves.
        """
        cdef Py_ssize_t serving = 0
        cdef Py_ssize_t ejected = 0
        cdef Py_ssize_t i
        cdef Py_ssize_t in_category
        cdef bint other_left
        cdef int member
        cdef _Group group
        for i in range(self._n):
            if self._categories[i]:
                serving += 1
                if self._agents[i].ejected_until > now:
                    ejected += 1
        if (ejected + 1) * 2 > serving:
            return False
        for category in <tuple>self._categories[slot]:
            group = self._group(category)
            in_category = 0
            other_left = False
            for i in range(group.n):
                member = group.slots[i]
                if self._agents[member].ejected_until > now:
                    in_category += 1
                elif member != slot and self._agents[member].available:
                    other_left = True
            if not other_left or (in_category + 1) * 2 > group.n:
                return False
        return True

    # ---- reporting ---------------------------------------------------------------------------------

    def agents(self, double now) -> list:
        """One AgentLoad per agent, in the order they were added, for status pages and the CLI."""
        cdef list out = []
        cdef Agent *agent
        for slot in range(self._n):
            agent = &self._agents[slot]
            out.append(AgentLoad(
                self._ids[slot],
                agent.capacity,
                agent.in_flight,
                <double>agent.in_flight / agent.capacity,
                agent.ewma_s * 1000.0 if agent.has_latency else None,
                agent.completed,
                agent.failed,
                agent.consecutive_failures,
                agent.ejections,
                agent.ejected_until > now,
                max(agent.ejected_until - now, 0.0),
                bool(agent.available),
                self._categories[slot],
            ))
        return out

    def stats(self) -> BalancerStats:
        """Totals since start: picks made, picks that found no agent, ejections."""
        return BalancerStats(
            self.strategy, bool(self.capacity_aware), self._picks, self._no_candidate, self._ejections, self._n
        )

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Balancer(strategy={self.strategy!r}, agents={self._n}, picks={self._picks})"
