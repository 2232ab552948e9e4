"""The tool registry the server resolves names against: the Cython index plus typo-tolerant matching.

Exact names cost a hash lookup; a mistyped name is resolved only when one tool clearly wins (rapidfuzz),
otherwise the caller gets an error that lists the closest names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NoReturn

import msgspec

from qe_appliance._core.registry import ToolIndex
from qe_appliance.tools.base import ToolSpec

# A winner must beat the runner-up by this many points (of 100): `qe_quality` scores 80 against
# qe_quality_gate and 71 against qe_quality_metrics, and guessing between them would run the wrong tool.
_MARGIN = 10.0
# Names scoring this much (or the cutoff, if lower) are offered as suggestions even when none resolves.
_SUGGESTION_SCORE = 60.0
_SUGGESTIONS = 3
# Tool names in the error message are cut to this length: the name is the caller's input.
_SHOWN_NAME = 80


class UnknownToolError(Exception):
    """No tool answers to `name`; `suggestions` holds up to three close names, best first."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        shown = name if len(name) <= _SHOWN_NAME else name[:_SHOWN_NAME] + "..."
        if suggestions:
            hint = "did you mean: " + ", ".join(suggestions) + "?"
        else:
            hint = "no tool is close (tools/list names every tool)"
        super().__init__(f"unknown tool {shown!r}; {hint}")


class RegistryStats(msgspec.Struct, rename="camel", frozen=True):
    """Lookup counters since start. Every lookup is exactly one of exactHits, cacheHits (a mistyped name
    resolved before; exact names never need the cache), fuzzyResolutions or misses. `avgLookupNs` includes
    the fuzzy matching of the names that needed it; lookups answered at once are timed one in 64, since a
    clock read costs more than they do."""

    total_tools: int
    categories: list[str]
    lookups: int
    exact_hits: int
    cache_hits: int
    cache_hit_rate: float
    fuzzy_resolutions: int
    misses: int
    avg_lookup_ns: float


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


class _NameMatcher:
    """Ranks the registered names against an unknown one and decides whether a single tool clearly wins."""

    def __init__(self, tools: Sequence[ToolSpec], threshold: float) -> None:
        self._tools = list(tools)
        self._choices = [_normalise(tool.name) for tool in self._tools]
        self._cutoff = threshold * 100.0
        self._floor = max(1.0, min(_SUGGESTION_SCORE, self._cutoff - _MARGIN))
        # fuzz.ratio is at most 200*len(shorter)/(len(a)+len(b)), so a name longer than this scores below
        # the floor against every tool; skipping it keeps a huge name from costing a scan of all tools.
        longest = max((len(choice) for choice in self._choices), default=0)
        self._longest_useful = int(longest * (200.0 / self._floor - 1.0))

    def _rank(self, name: str) -> list[tuple[ToolSpec, float]]:
        if len(name) > self._longest_useful:
            return []
        # Imported on the first unknown name, not at start-up (~10 ms); the next ones find it loaded.
        from rapidfuzz import fuzz, process

        ranked = process.extract(
            _normalise(name),
            self._choices,
            scorer=fuzz.ratio,
            processor=None,
            limit=_SUGGESTIONS,
            score_cutoff=self._floor,
        )
        return [(self._tools[index], score) for _, score, index in ranked]

    def resolve(self, name: str) -> ToolSpec:
        """The one tool `name` clearly stands for; raises UnknownToolError with suggestions otherwise."""
        ranked = self._rank(name)
        if ranked:
            best = ranked[0][1]
            runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
            # 100 means equal after normalisation (QE_FLEET_STATUS): unambiguous unless two tools tie.
            clear = best - runner_up >= _MARGIN or (best == 100.0 and runner_up < 100.0)
            if best >= self._cutoff and clear:
                return ranked[0][0]
        raise UnknownToolError(name, [tool.name for tool, _ in ranked])

    def refuse(self, name: str) -> NoReturn:
        """Fuzzy resolution switched off: report the unknown name with the closest names as hints."""
        raise UnknownToolError(name, [tool.name for tool, _ in self._rank(name)])


class ToolRegistry:
    """Every registered tool by exact name and by category, with cached, typo-tolerant resolution."""

    resolve: Callable[[str], tuple[ToolSpec, bool]]
    """`(tool, resolved_by_fuzzy)` for `name`; raises UnknownToolError (with suggestions) otherwise.

    The index's own method, bound per instance: a Python method around it would cost more than the lookup.
    """

    def __init__(
        self,
        tools: Sequence[ToolSpec],
        *,
        cache_enabled: bool = True,
        cache_size: int = 1000,
        fuzzy_enabled: bool = True,
        fuzzy_threshold: float = 0.8,
    ) -> None:
        if not 0.0 < fuzzy_threshold <= 1.0:
            raise ValueError(f"fuzzy threshold must be in (0, 1], got {fuzzy_threshold}; the default is 0.8")
        self._matcher = _NameMatcher(tools, fuzzy_threshold)
        self._index: ToolIndex[ToolSpec] = ToolIndex(tools, self._matcher.refuse, cache_size=0, cache_enabled=False)
        self.resolve = self._index.resolve
        self._fuzzy_enabled = False
        self.configure(cache_enabled=cache_enabled, cache_size=cache_size, fuzzy_enabled=fuzzy_enabled)

    def get(self, name: str) -> ToolSpec | None:
        """The tool registered under exactly `name`, without touching the cache or the counters."""
        return self._index.get(name)

    def tools(self) -> list[ToolSpec]:
        """All tools in registration order."""
        return list(self._index.tools)

    def by_category(self, category: str) -> list[ToolSpec]:
        """The tools of `category` in registration order; empty for an unknown category."""
        return list(self._index.by_category(category))

    def categories(self) -> list[str]:
        """Category names in the order their first tool was registered."""
        return list(self._index.categories())

    def configure(self, *, cache_enabled: bool, cache_size: int, fuzzy_enabled: bool) -> None:
        """Apply `registry` settings while running; shrinking the cache evicts the oldest names."""
        if cache_size < 0:
            raise ValueError(f"registry.cacheSize must be 0 or more, got {cache_size}")
        if self._fuzzy_enabled and not fuzzy_enabled:
            # Typos resolved while fuzzy matching was on must stop resolving now that it is off.
            self._index.cache.clear()
        self._index.configure(cache_enabled=cache_enabled, cache_size=cache_size)
        self._index.fuzzy = self._matcher.resolve if fuzzy_enabled else self._matcher.refuse
        self._fuzzy_enabled = fuzzy_enabled

    def stats(self) -> RegistryStats:
        """Counters for `aqe-v3 mcp tools stats`, the dashboard and /metrics."""
        index = self._index
        lookups = index.lookups
        return RegistryStats(
            total_tools=len(index.tools),
            categories=self.categories(),
            lookups=lookups,
            exact_hits=index.exact_hits,
            cache_hits=index.cache_hits,
            cache_hit_rate=index.cache_hits / lookups if lookups else 0.0,
            fuzzy_resolutions=index.fuzzy_resolutions,
            misses=index.misses,
            avg_lookup_ns=index.total_ns / lookups if lookups else 0.0,
        )
