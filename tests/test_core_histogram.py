"""Latency histogram (Cython): percentiles within 1% of exact ones, exact totals, clamping, Prometheus `le`
counts, merging, and the per-second windows behind "the last N seconds" (driven through a `now` test hook).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qe_appliance._core.histogram import HIGHEST, LOWEST, RELATIVE_ERROR, Histogram

STATED_ERROR = 0.01
# Durations spread over the whole range, log-uniform so every octave gets its share.
durations = st.floats(min_value=math.log(LOWEST), max_value=math.log(HIGHEST)).map(math.exp)
samples = st.lists(durations, min_size=1, max_size=400)
percentiles = st.one_of(st.integers(0, 100).map(float), st.sampled_from([99.9, 99.99, 12.5, 33.3, 66.7]))


def exact_percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(q)) * len(ordered) / 100)
    return ordered[max(rank, 1) - 1]


def filled(values: list[float], **options: int) -> Histogram:
    histogram = Histogram(**options)
    for value in values:
        histogram.record(value)
    return histogram


@settings(max_examples=300, deadline=None)
@given(samples, percentiles)
def test_percentiles_are_within_the_stated_error_of_the_exact_ones(values: list[float], q: float) -> None:
    assert RELATIVE_ERROR <= STATED_ERROR
    exact = exact_percentile(values, q)
    assert filled(values).percentile(q) == pytest.approx(exact, rel=STATED_ERROR)


@settings(max_examples=100, deadline=None)
@given(samples)
def test_count_total_min_and_max_are_exact(values: list[float]) -> None:
    histogram = filled(values)
    assert histogram.count == len(values)
    assert histogram.total == pytest.approx(math.fsum(values), rel=1e-9)
    assert (histogram.min, histogram.max) == (min(values), max(values))
    assert histogram.percentile(0) == min(values)
    assert histogram.percentile(100) == max(values)


@settings(max_examples=100, deadline=None)
@given(samples, st.lists(durations, min_size=1, max_size=20).map(sorted))
def test_cumulative_counts_match_prometheus_le_semantics_within_one_bucket(
    values: list[float], bounds: list[float]
) -> None:
    counts = filled(values).cumulative(bounds)
    for bound, count in zip(bounds, counts, strict=True):
        at_or_below = sum(value <= bound for value in values)
        within_a_bucket = sum(value <= bound * (1 + 2 * RELATIVE_ERROR) for value in values)
        assert at_or_below <= count <= within_a_bucket


def test_an_empty_histogram_reads_as_zero() -> None:
    histogram = Histogram()
    assert (histogram.count, histogram.total, histogram.min, histogram.max) == (0, 0.0, 0.0, 0.0)
    assert histogram.percentile(99) == 0.0
    assert histogram.cumulative([0.001, math.inf]) == [0, 0]
    assert histogram.recent(60).count == 0


def test_values_outside_the_range_land_in_the_edge_buckets_but_keep_their_totals() -> None:
    histogram = filled([1e-9, 3600.0])
    assert histogram.count == 2
    assert histogram.total == pytest.approx(3600.0 + 1e-9)
    assert histogram.max == 3600.0
    assert histogram.cumulative([LOWEST / 2, LOWEST, HIGHEST, math.inf]) == [0, 1, 2, 2]


def test_nan_negative_and_infinite_durations_are_counted_not_lost() -> None:
    histogram = filled([math.nan, -0.5, math.inf])
    assert histogram.count == 3
    assert histogram.total == HIGHEST
    assert histogram.min == 0.0 and histogram.max == HIGHEST


def test_percentile_and_cumulative_reject_bad_arguments() -> None:
    histogram = filled([0.01])
    for q in (-1.0, 100.5, math.nan):
        with pytest.raises(ValueError, match="between 0 and 100"):
            histogram.percentile(q)
    with pytest.raises(ValueError, match="increasing order"):
        histogram.cumulative([0.1, 0.01])
    with pytest.raises(ValueError, match="window_s"):
        Histogram(window_s=0)
    with pytest.raises(ValueError, match="windows"):
        Histogram(windows=-1)


def test_a_rank_a_float_hair_above_a_whole_number_is_not_the_next_sample() -> None:
    # 99.9 * 1000 / 100 is 999.0000000000001 in binary floating point; the answer is sample 999, not 1000.
    values = [0.001] * 999 + [10.0]
    assert filled(values).percentile(99.9) == pytest.approx(0.001, rel=STATED_ERROR)


@settings(max_examples=100, deadline=None)
@given(samples, samples)
def test_merge_equals_recording_everything_in_one(left: list[float], right: list[float]) -> None:
    merged = filled(left)
    merged.merge(filled(right))
    whole = filled(left + right)
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)
    assert merged.total == pytest.approx(whole.total)
    for q in (50, 95, 99, 99.9):
        assert merged.percentile(q) == whole.percentile(q)
    bounds = [0.001, 0.01, 0.1, 1.0, 10.0]
    assert merged.cumulative(bounds) == whole.cumulative(bounds)


def test_merge_refuses_itself_and_windows_of_another_width() -> None:
    histogram = filled([0.01])
    with pytest.raises(ValueError, match="itself"):
        histogram.merge(histogram)
    with pytest.raises(ValueError, match="merge other.recent"):
        histogram.merge(filled([0.01], window_s=5))
    windowless = Histogram(windows=0)
    windowless.merge(filled([0.02], window_s=5))
    assert windowless.count == 1


def test_recent_merges_only_the_windows_of_the_last_n_seconds() -> None:
    histogram = Histogram(window_s=1, windows=10)
    for second in range(100, 120):
        histogram._record_at(second / 1000, float(second) + 0.5)  # 100 ms .. 119 ms, one per second
    last5 = histogram._recent_at(5, 119.9)
    assert last5.count == 5
    assert (last5.min, last5.max) == (0.115, 0.119)
    assert last5.windows == 0
    # The ring holds 10 windows: asking for more gives those 10, and the all-time data keeps everything.
    assert histogram._recent_at(60, 119.9).count == 10
    assert histogram.count == 20
    # Seconds later nothing recent is left.
    assert histogram._recent_at(5, 130.0).count == 0
    assert histogram._recent_at(5, 122.0).count == 2  # seconds 118 and 119


def test_windows_wider_than_a_second_group_their_values() -> None:
    histogram = Histogram(window_s=10, windows=6)
    histogram._record_at(0.01, 100.0)
    histogram._record_at(0.02, 109.9)
    histogram._record_at(0.03, 110.0)
    assert histogram._recent_at(1, 109.95).count == 2
    assert histogram._recent_at(1, 110.0).count == 1
    assert histogram._recent_at(20, 110.0).count == 3


def test_a_value_older_than_the_ring_counts_only_all_time() -> None:
    histogram = Histogram(window_s=1, windows=4)
    histogram._record_at(0.5, 8.0)
    histogram._record_at(0.25, 4.0)  # same slot as second 8, older: not in any window
    assert histogram.count == 2
    assert histogram._recent_at(4, 8.0).count == 1


def test_merge_lines_windows_up_by_time() -> None:
    a, b = Histogram(windows=10), Histogram(windows=10)
    a._record_at(0.01, 50.0)
    b._record_at(0.02, 50.0)
    b._record_at(0.03, 55.0)
    a.merge(b)
    assert a._recent_at(1, 50.0).count == 2
    assert a._recent_at(1, 55.0).count == 1
    assert a._recent_at(10, 55.0).count == 3


def test_recent_needs_windows_and_a_positive_span() -> None:
    with pytest.raises(ValueError, match="keeps no windows"):
        Histogram(windows=0).recent(10)
    with pytest.raises(ValueError, match="more than 0"):
        Histogram().recent(0)


def test_recent_uses_the_monotonic_clock() -> None:
    histogram = filled([0.004, 0.005])
    assert histogram.recent(2).count == 2
    assert histogram.recent(2).percentile(100) == 0.005


def test_reset_forgets_everything() -> None:
    histogram = filled([0.1, 0.2])
    histogram.reset()
    assert histogram.count == 0 and histogram.percentile(50) == 0.0
    assert histogram.recent(60).count == 0
    histogram.record(0.3)
    assert histogram.recent(60).percentile(50) == 0.3


@settings(max_examples=200, deadline=None)
@given(samples, samples, percentiles)
def test_serialized_histograms_merge_into_the_percentiles_of_all_values(
    first: list[float], second: list[float], q: float
) -> None:
    """What the supervisor does with its workers' histograms: bytes from each, merged, read once."""
    merged = Histogram.from_bytes(filled(first).to_bytes())
    merged.merge(Histogram.from_bytes(filled(second).to_bytes()))
    together = filled(first + second)
    assert merged.count == together.count and merged.min == together.min and merged.max == together.max
    assert merged.total == pytest.approx(together.total)
    assert merged.percentile(q) == together.percentile(q)
    exact = exact_percentile(first + second, q)
    assert merged.percentile(q) == pytest.approx(exact, rel=STATED_ERROR, abs=LOWEST)


def test_serialized_histograms_are_checked() -> None:
    empty = Histogram.from_bytes(Histogram().to_bytes())
    assert empty.count == 0 and empty.percentile(99) == 0.0
    data = filled([0.001, 0.002, 0.5]).to_bytes()
    for bad, words in ((b"", "HDR1 header"), (b"XXXX" + data[4:], "HDR1 header"),
                       (data[:-8], "cannot hold buckets"), (data[:4] + b"\x09" + data[5:], "hold 3 values")):
        with pytest.raises(ValueError, match=words):
            Histogram.from_bytes(bad)
