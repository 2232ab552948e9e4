"""The fleet RPC trusts no reply (issue 17 item 10c): a reply announcing more than the frame limit is
refused before it is buffered, and a reply whose id is not the waiting call's fails that call; either way
the connection is closed and the next call is served. Real agent processes, made faulty by a preloaded
compute function that rewrites their next reply."""

from __future__ import annotations

import time

import pytest

from qe_appliance.fleet.runtime import Fleet, FleetError
from tests import agent_functions as fns
from tests.test_fleet import fleet, run  # noqa: F401 (fixture: real agents, tests.agent_functions preloaded)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("kind", "problem"),
    [("size", "over the 268435456-byte limit"), ("id", "sent a reply for call")],
)
async def test_a_reply_that_breaks_the_protocol_fails_its_call_at_once(
    fleet: Fleet,  # noqa: F811 (the fixture imported above)
    kind: str,
    problem: str,
) -> None:
    started = time.monotonic()
    with pytest.raises(FleetError, match=problem):
        await run(fleet, fns.misframe, kind, timeout=20)
    assert time.monotonic() - started < 5  # not held until the call's deadline
    assert fleet.status().pool.in_use == 0
    for n in range(4):  # the fleet keeps serving, on every agent
        assert (await run(fleet, fns.echo, n))["payload"] == n
