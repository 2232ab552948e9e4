"""Named pipelines for qe_task_orchestrate: tools run in order per input, each fed by the earlier results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# A pipeline step: (tool name, arguments built from the subtask's input and the earlier steps' results).
Step = tuple[str, Callable[[dict[str, Any], list[Any]], dict[str, Any]]]


def pass_input(item: dict[str, Any], _results: list[Any]) -> dict[str, Any]:
    return item


def _pick(*keys: str) -> Callable[[dict[str, Any], list[Any]], dict[str, Any]]:
    return lambda item, _results: {k: item[k] for k in keys if k in item}


# Named pipelines for qe_task_orchestrate, run once per input.
PIPELINES: dict[str, tuple[str, Sequence[Step]]] = {
    "coverage-gate": (
        "A coverage report ({path | content, format?, policyName?}) analysed, its riskiest gaps ranked, "
        "then gated by the named policy (default: the config's default policy).",
        (
            ("qe_coverage_analyze", _pick("path", "content", "format", "root")),
            ("qe_coverage_gaps", lambda item, results: {"reportId": results[0]["reportId"]}),
            (
                "qe_quality_gate",
                lambda item, results: {
                    "policyName": item.get("policyName", "default"),
                    "inputs": {"coverageReport": results[0]["reportId"]},
                },
            ),
        ),
    ),
}


def steps_of(kind: str) -> Sequence[Step]:
    """What a task of `kind` (a pipeline name, else a tool name) runs per input."""
    return PIPELINES[kind][1] if kind in PIPELINES else ((kind, pass_input),)
