"""Functions an agent may run: pure, importable, with msgpack-able arguments and results.

A tool marks its CPU-heavy step with `@compute` and calls it through `ctx.compute(fn, payload)`; the
appliance runs it on an agent (tools with `execution: fleet`) or in a worker thread (`execution: local`).
Agents only run functions registered here, looked up by name — never arbitrary code from the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

ComputeFn = Callable[[Any], Any]
F = TypeVar("F", bound=ComputeFn)

REGISTRY: dict[str, ComputeFn] = {}


def name_of(fn: ComputeFn) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def compute(fn: F) -> F:
    """Register `fn(payload) -> result` as runnable on agents."""
    REGISTRY[name_of(fn)] = fn
    return fn


def lookup(name: str) -> ComputeFn:
    fn = REGISTRY.get(name)
    if fn is None:
        raise LookupError(f"{name} is not a registered compute function")
    return fn
