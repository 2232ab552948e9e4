"""The release gate: measured values against a policy's thresholds, judged without any model call.

Each threshold the policy sets is one criterion: pass when the value meets it, fail when it does not,
warn when the value was not measured (the gate cannot vouch for it). The overall verdict is fail when
any criterion fails, else warn when any warns, else pass.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Verdict = Literal["pass", "warn", "fail"]


class GatePolicy(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True, forbid_unknown_fields=True
):
    """Thresholds to enforce; any subset. Coverage and maintainability in percent, rates as ratios 0..1."""

    min_line_coverage: Annotated[Percent | None, msgspec.Meta(description="Line coverage %, at least.")] = (
        None
    )
    min_branch_coverage: Annotated[
        Percent | None, msgspec.Meta(description="Branch coverage %, at least.")
    ] = None
    max_complexity: Annotated[
        Count | None, msgspec.Meta(description="Cyclomatic complexity of the worst function, at most.")
    ] = None
    min_maintainability: Annotated[
        Percent | None,
        msgspec.Meta(description="Maintainability index (0..100, SLOC-weighted over the files), at least."),
    ] = None
    max_failed_tests: Annotated[
        Count | None, msgspec.Meta(description="Failed plus errored tests, at most.")
    ] = None
    min_pass_rate: Annotated[
        Ratio | None, msgspec.Meta(description="Passed / run tests (0..1), at least.")
    ] = None
    max_critical_gaps: Annotated[
        Count | None, msgspec.Meta(description="Coverage gaps of critical severity, at most.")
    ] = None
    max_skipped_ratio: Annotated[
        Ratio | None, msgspec.Meta(description="Skipped / all tests (0..1), at most.")
    ] = None


class GateMetrics(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Measured values to judge; same units as the policy. Unset values are measured from inputs."""

    line_coverage: Annotated[Percent | None, msgspec.Meta(description="Line coverage %.")] = None
    branch_coverage: Annotated[Percent | None, msgspec.Meta(description="Branch coverage %.")] = None
    max_complexity: Annotated[
        Count | None, msgspec.Meta(description="Cyclomatic complexity of the worst function.")
    ] = None
    maintainability: Annotated[Percent | None, msgspec.Meta(description="Maintainability index.")] = None
    failed_tests: Annotated[Count | None, msgspec.Meta(description="Failed plus errored tests.")] = None
    pass_rate: Annotated[Ratio | None, msgspec.Meta(description="Passed / run tests.")] = None
    critical_gaps: Annotated[Count | None, msgspec.Meta(description="Critical coverage gaps.")] = None
    skipped_ratio: Annotated[Ratio | None, msgspec.Meta(description="Skipped / all tests.")] = None


class Criterion(msgspec.Struct, rename="camel", frozen=True):
    criterion: str
    metric: str
    comparison: Literal[">=", "<="]
    threshold: float
    actual: float | None
    verdict: Verdict


class GateResult(msgspec.Struct, rename="camel", frozen=True):
    verdict: Verdict
    summary: Annotated[str, msgspec.Meta(description="One line for a CI log.")]
    policy: str
    criteria: list[Criterion]
    metrics: GateMetrics


# policy field, metric field, comparison, words for the summary
_CRITERIA: Final[tuple[tuple[str, str, Literal[">=", "<="], str], ...]] = (
    ("min_line_coverage", "line_coverage", ">=", "line coverage"),
    ("min_branch_coverage", "branch_coverage", ">=", "branch coverage"),
    ("max_complexity", "max_complexity", "<=", "worst complexity"),
    ("min_maintainability", "maintainability", ">=", "maintainability"),
    ("max_failed_tests", "failed_tests", "<=", "failed tests"),
    ("min_pass_rate", "pass_rate", ">=", "pass rate"),
    ("max_critical_gaps", "critical_gaps", "<=", "critical gaps"),
    ("max_skipped_ratio", "skipped_ratio", "<=", "skipped ratio"),
)


def exact_percent(covered: int, total: int) -> float | None:
    """covered / total in percent, unrounded: the gate compares this (76.0486 must fail a 76.049 minimum);
    reports round for display only. None for 0 of 0."""
    return 100.0 * covered / total if total else None


def needs(policy: GatePolicy) -> set[str]:
    """The metric fields the policy judges."""
    return {metric for field, metric, *_ in _CRITERIA if getattr(policy, field) is not None}


def evaluate(policy: GatePolicy, metrics: GateMetrics, policy_name: str) -> GateResult:
    criteria: list[Criterion] = []
    problems: list[str] = []
    for field, metric, comparison, words in _CRITERIA:
        threshold = getattr(policy, field)
        if threshold is None:
            continue
        actual = getattr(metrics, metric)
        verdict: Verdict
        if actual is None:
            verdict = "warn"
            problems.append(f"{words} not measured")
        elif (actual >= threshold) if comparison == ">=" else (actual <= threshold):
            verdict = "pass"
        else:
            verdict = "fail"
            problems.append(
                f"{words} {_number(actual)} {'<' if comparison == '>=' else '>'} {_number(threshold)}"
            )
        criteria.append(Criterion(_camel(field), _camel(metric), comparison, threshold, actual, verdict))
    verdicts = [criterion.verdict for criterion in criteria]
    overall: Verdict = "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"
    passed = verdicts.count("pass")
    detail = "; ".join(problems) if problems else "every threshold met"
    summary = (
        f"quality gate {overall.upper()} (policy {policy_name}): {detail} "
        f"[{passed}/{len(criteria)} criteria passed]"
    )
    return GateResult(overall, summary, policy_name, criteria, metrics)


def _number(value: float) -> str:
    return f"{value:g}"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
