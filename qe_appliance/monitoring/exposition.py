"""Prometheus text exposition of the Monitor's families; imported at the first scrape, not at start-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from qe_appliance.monitoring.families import Family, buckets


def registry(families: Callable[[], list[Family]]) -> CollectorRegistry:
    """A registry that builds `families()` at each scrape, plus the process metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(families))
    ProcessCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)


class _Collector(Collector):
    """Builds the metric families at scrape time; nothing is registered per request."""

    def __init__(self, families: Callable[[], list[Family]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families():
            yield _prometheus_family(family)


def _prometheus_family(family: Family) -> Metric:
    labels = list(family.labels)
    if family.kind == "histogram":
        histograms = HistogramMetricFamily(family.name, family.help, labels=labels)
        for values, histogram in family.samples:
            histograms.add_metric(list(values), buckets(histogram, family.bounds), histogram.total)
        return histograms
    if family.kind == "summary":
        summaries = SummaryMetricFamily(family.name, family.help, labels=labels)
        for values, (count, total) in family.samples:
            summaries.add_metric(list(values), count, total)
        return summaries
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = kind(family.name, family.help, labels=labels)
    for values, value in family.samples:
        metric.add_metric(list(values), value)
    return metric
