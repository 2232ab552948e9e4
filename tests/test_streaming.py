"""Progress over server-sent events and cancellation, with tools that stream and block.

The shipped tools do not stream yet, so the appliance runs in-process (real loopback socket, uvloop in a
thread) with two extra tools: one that reports progress, one that waits until it is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
import uvloop
from mcp import Client

from qe_appliance.config import apply_overrides, load_config
from qe_appliance.lifecycle import Server
from qe_appliance.tools import ALL_TOOLS
from qe_appliance.tools.base import ToolContext, ToolSpec

pytestmark = pytest.mark.anyio


class CountArgs(msgspec.Struct, forbid_unknown_fields=True):
    steps: int = 3


class WaitArgs(msgspec.Struct, forbid_unknown_fields=True):
    label: str = "w"


EVENTS: list[str] = []


async def count(ctx: ToolContext, args: CountArgs) -> dict[str, int]:
    for i in range(1, args.steps + 1):
        await ctx.progress(i, args.steps, f"step {i}")
        await ctx.log("info", f"did step {i}")
    return {"steps": args.steps}


async def wait_forever(ctx: ToolContext, args: WaitArgs) -> dict[str, str]:
    EVENTS.append(f"start {args.label}")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        EVENTS.append(f"cancelled {args.label}")
        raise
    return {"label": args.label}


EXTRA = (
    ToolSpec(
        name="t_count",
        title="Count",
        description="Reports progress per step.",
        category="test",
        input_type=CountArgs,
        handler=count,
        read_only=True,
    ),
    ToolSpec(
        name="t_wait",
        title="Wait",
        description="Waits until cancelled.",
        category="test",
        input_type=WaitArgs,
        handler=wait_forever,
        read_only=True,
    ),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("stream")
    cfg_path = Path(state, "c.yaml")
    cfg_path.write_text(f'server: {{port: 0, stateDir: "{state}"}}\n')
    cfg = apply_overrides(load_config(cfg_path))
    loop = uvloop.new_event_loop()
    holder: list[Server] = []

    async def serve() -> None:
        # Built on the loop's thread: the SQLite store belongs to the thread that opened it.
        holder.append(Server(cfg, catalog=(*ALL_TOOLS, *EXTRA)))
        await holder[0].serve()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (holder and holder[0].address and holder[0].readiness() is None) and time.monotonic() < deadline:
        time.sleep(0.01)
    server = holder[0]
    assert server.address is not None
    yield f"http://127.0.0.1:{server.address[1]}/mcp"
    asyncio.run_coroutine_threadsafe(server.drain_and_stop(2), loop).result(10)
    thread.join(10)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_progress_and_log_notifications_arrive_before_the_result(url: str, mode: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(params: object) -> None:
        logs.append(str(getattr(params, "data", "")))

    async with Client(url, mode=mode, logging_callback=on_log, log_level="info") as client:
        if mode == "legacy":
            await client.set_logging_level("info")
        result = await client.call_tool("t_count", {"steps": 4}, progress_callback=on_progress)
    assert not result.is_error and result.structured_content == {"steps": 4}
    assert progress == [(i, 4, f"step {i}") for i in range(1, 5)]
    assert logs == [f"did step {i}" for i in range(1, 5)]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_cancelling_a_call_stops_the_tool(url: str, mode: str) -> None:
    label = f"cancel-{mode}"
    async with Client(url, mode=mode) as client:
        with anyio.move_on_after(0.5):
            await client.call_tool("t_wait", {"label": label})
        # The server stops the tool (notifications/cancelled, or the closed response stream).
        deadline = time.monotonic() + 5
        while f"cancelled {label}" not in EVENTS and time.monotonic() < deadline:
            await anyio.sleep(0.02)
        assert f"start {label}" in EVENTS and f"cancelled {label}" in EVENTS
        # The connection and the session remain usable.
        listed = await client.list_tools()
        assert "t_wait" in [t.name for t in listed.tools]
