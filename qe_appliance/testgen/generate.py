"""The tests of one target, in the request's style: docstring examples, example-based tests and learned
templates (unit), hypothesis properties (property), or all of them (both)."""

from __future__ import annotations

import ast
from typing import Literal

from qe_appliance.testgen.cases import Planner
from qe_appliance.testgen.doctests import Docstring, docstring_tests
from qe_appliance.testgen.learned import LearnedPattern, edge_values, template_tests
from qe_appliance.testgen.model import TestCase
from qe_appliance.testgen.properties import fuzz_test, relation_test, relations
from qe_appliance.testgen.source import ModuleFacts, Target, raw_docstring

Style = Literal["unit", "property", "both"]


def target_tests(
    facts: ModuleFacts, target: Target, style: Style, patterns: list[LearnedPattern]
) -> tuple[list[TestCase], list[str]]:
    """The tests for `target` and notes on what could not be tested and why."""
    unit = style in ("unit", "both")
    tests: list[TestCase] = []
    notes: list[str] = []
    if target.kind == "module":
        doc = raw_docstring(facts.tree)
        if unit and doc is not None:
            tests, notes = docstring_tests(Docstring(doc[0], target.name, None, "module", doc[1]), facts)
        return tests, notes
    planner = Planner(facts)
    if unit:
        tests, notes = _doctests(facts, target)
    plan = planner.plan(target, edge_values(patterns) if unit else [])
    if plan is None:
        notes.append(f"{target.name}: no test calls it: {planner.refusal}")
        return tests, notes
    if unit:
        tests += planner.example_tests(plan)
        tests += template_tests(planner, plan, patterns)
    if style in ("property", "both"):
        fuzz = fuzz_test(planner, plan)
        if fuzz is not None:
            tests.append(fuzz)
        for relation in relations(facts).get(target.name, []) if target.kind == "function" else []:
            other = (
                plan if relation.other == target.name else planner.plan(Target(relation.other, "function"))
            )
            test = relation_test(planner, plan, other, relation) if other is not None else None
            if test is not None:
                tests.append(test)
    return tests, notes + plan.notes


def _doctests(facts: ModuleFacts, target: Target) -> tuple[list[TestCase], list[str]]:
    node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
    if target.kind == "class":
        node, group, stem = facts.classes[target.name].node, target.name, target.name.lower()
    elif target.kind == "method":
        owner, method = target.name.split(".", 1)
        node, group, stem = facts.classes[owner].methods[method].node, owner, method
    else:
        node, group, stem = facts.functions[target.name].node, None, target.name
    doc = raw_docstring(node)
    if doc is None or ">>>" not in doc[0]:
        return [], []
    return docstring_tests(Docstring(doc[0], target.name, group, stem, doc[1]), facts)
