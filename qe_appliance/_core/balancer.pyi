"""Type stub of the Cython Balancer (_core/balancer.pyx)."""

from collections.abc import Iterable
from typing import Final, final

import msgspec

STRATEGIES: Final[tuple[str, str, str]]

class AgentLoad(msgspec.Struct, rename="camel", frozen=True, gc=False):
    id: str
    capacity: int
    in_flight: int
    load: float
    ewma_ms: float | None
    completed: int
    failed: int
    consecutive_failures: int
    ejections: int
    ejected: bool
    ejected_for_s: float
    available: bool
    categories: tuple[str, ...]

class BalancerStats(msgspec.Struct, rename="camel", frozen=True, gc=False):
    strategy: str
    capacity_aware: bool
    picks: int
    no_candidate: int
    ejections: int
    agents: int

@final
class Balancer:
    capacity_aware: bool
    def __init__(
        self,
        strategy: str = "least-connections",
        *,
        capacity_aware: bool = True,
        failures_to_eject: int = 5,
        base_ejection_s: float = 10.0,
        max_ejection_s: float = 300.0,
        ewma_alpha: float = 0.2,
        seed: int | None = None,
    ) -> None: ...
    @property
    def strategy(self) -> str: ...
    @strategy.setter
    def strategy(self, value: str) -> None: ...
    def add(self, agent_id: str, capacity: int, categories: Iterable[str]) -> None: ...
    def remove(self, agent_id: str) -> None: ...
    def set_available(self, agent_id: str, available: bool) -> None: ...
    def pick(self, category: str, now: float) -> str | None: ...
    def release(self, agent_id: str) -> None: ...
    def finish(self, agent_id: str, latency_s: float, ok: bool, now: float) -> None: ...
    def agents(self, now: float) -> list[AgentLoad]: ...
    def stats(self) -> BalancerStats: ...
    def __len__(self) -> int: ...
