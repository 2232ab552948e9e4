"""Metric families as the Monitor builds them and both exports (Prometheus text, JSON) read them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

Kind = Literal["counter", "gauge", "histogram", "summary"]


class Family(msgspec.Struct):
    """A metric family as both exports see it. `samples` pairs label values with a number, a Histogram
    (kind histogram, bucketed at `bounds`) or a (count, sum) pair (kind summary)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], Any]] = msgspec.field(default_factory=list)
    bounds: tuple[float, ...] = ()

    def add(self, value: Any, *labels: str) -> Family:
        self.samples.append((labels, value))
        return self


def buckets(histogram: Any, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, `le` spelled as Prometheus spells it, ending with +Inf."""
    from prometheus_client.utils import floatToGoString

    counts = histogram.cumulative(bounds)
    spell: Callable[[float], str] = floatToGoString  # prometheus_client.utils ships without annotations
    return [(spell(bound), count) for bound, count in zip(bounds, counts, strict=True)] + [("+Inf", histogram.count)]
