"""The test-generation tool: runnable pytest or unittest modules from Python source (issue 6)."""

from __future__ import annotations

from typing import Annotated, Literal, NoReturn

import msgspec

from qe_appliance.tools.base import NotAvailable, ToolContext, ToolSpec

CATEGORY = "test-generation"
TEST_GENERATE = "qe_test_generate"

Text = Annotated[str, msgspec.Meta(min_length=1)]


class GenerateTestsInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Generate a test module for Python code given inline (`source`) or as a file/module `path`."""

    source: Annotated[Text | None, msgspec.Meta(description="Python source code to test; or give path.")] = (
        None
    )
    path: Annotated[
        Text | None,
        msgspec.Meta(
            description="Python file or dotted module under the server's workspace roots; or give source."
        ),
    ] = None
    targets: Annotated[
        Annotated[list[Text], msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(
            description="Only these functions, classes or Class.method names; omit for every public one."
        ),
    ] = None
    framework: Annotated[
        Literal["pytest", "unittest"], msgspec.Meta(description="Test framework of the generated module.")
    ] = "pytest"
    style: Annotated[
        Literal["unit", "property", "both"],
        msgspec.Meta(description="unit: example-based tests; property: hypothesis property tests; both."),
    ] = "unit"
    max_tests: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=1000)] | None,
        msgspec.Meta(description="Upper bound on the number of tests; omit for no bound."),
    ] = None
    verify: Annotated[
        bool,
        msgspec.Meta(description="Run the generated tests with pytest and mark which pass and which fail."),
    ] = False


async def generate_tests(ctx: ToolContext, args: GenerateTestsInput) -> NoReturn:
    raise NotAvailable(TEST_GENERATE)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=TEST_GENERATE,
        title="Generate tests",
        description=(
            "Write a runnable pytest (or unittest) module for Python code: boundary-value tests from type "
            "annotations and defaults, pytest.raises cases for explicit raises, asserts from docstring "
            "examples, and hypothesis property tests, informed by learned test patterns. Returns the module "
            "text and a list of the generated tests; with verify=true it also runs them and reports which "
            "pass."
        ),
        category=CATEGORY,
        input_type=GenerateTestsInput,
        handler=generate_tests,
        # Records which learned patterns were used, so a repeat call is not free of effects.
        read_only=False,
        idempotent=False,
    ),
)
