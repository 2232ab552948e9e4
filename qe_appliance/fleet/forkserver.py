"""The forkserver agents are forked from: started first thing by `aqe-v3 mcp start` (stdlib imports only).

It is a second interpreter that imports the tool modules once; every agent is a fork of it, ready in
milliseconds. Starting it before the server imports anything lets both import in parallel.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import threading

# Modules whose @compute functions agents serve; modules named in fleet.preload are imported by each
# agent as it starts (they are known only once the configuration is read).
# radon and rapidfuzz are imported where first used, not by the tool modules (the server's start-up skips
# them): the agents have them preloaded.
PRELOAD = [
    "qe_appliance.fleet.forkserver_title", "qe_appliance.tools", "qe_appliance.fleet.agent", "radon.metrics",
    "radon.raw", "radon.visitors", "rapidfuzz",
]


def context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start_in_background() -> None:
    """Start the forkserver now; the first agent spawn waits for it when it is not ready yet."""
    context()
    threading.Thread(target=multiprocessing.forkserver.ensure_running, daemon=True, name="forkserver").start()


def stop_in_background() -> None:
    """Stop the forkserver start_in_background started: this process turned out to need no agents (the
    supervisor of several workers, each of which starts its own)."""
    # multiprocessing has no public way to stop it; _stop is what its own tests use. It waits for the preload
    # to finish, so off the main thread.
    stop = getattr(multiprocessing.forkserver._forkserver, "_stop")  # noqa: B009 (private: mypy does not know it)
    threading.Thread(target=stop, daemon=True, name="forkserver-stop").start()
