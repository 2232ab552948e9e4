"""The forkserver agents are forked from: a fork of the server itself, made once the server has imported the
tool modules and before it starts any thread or event loop (Android's zygote, gunicorn's preload_app).

Every agent is a fork of it, ready in milliseconds with the tools already imported, and the tool modules are
imported once per start instead of twice (the server, then a second interpreter for multiprocessing's own
forkserver): half the CPU of a start, which is what decides how soon a start on a busy machine is ready.
It speaks multiprocessing's forkserver protocol (multiprocessing.forkserver.main serves in it), so agents are
started with the "forkserver" context as before.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import socket
import traceback
from multiprocessing import connection, resource_tracker
from typing import Any

# What agents use that the server's start-up does not import (radon, rapidfuzz: imported where first used):
# the forkserver imports them once, after the fork and in parallel with the server's start. Modules named in
# fleet.preload are imported by each agent as it starts (they are known only once the configuration is read).
PRELOAD = ("qe_appliance.tools", "qe_appliance.fleet.agent", "radon.metrics", "radon.raw", "radon.visitors",
           "rapidfuzz", "qe_appliance.coverage.cobertura", "qe_appliance.coverage.jacoco",
           "qe_appliance.coverage.lcov")


def context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    # Where no forkserver was forked from here (a Fleet embedded in tests or benchmarks), multiprocessing
    # starts its own, which then imports the same modules before forking agents.
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def fork_from_here() -> None:
    """Fork this process into the agents' forkserver. Call it with no thread but the main one running."""
    # multiprocessing's private parts (typeshed leaves them out): the state its ensure_running keeps.
    server: Any = multiprocessing.forkserver._forkserver
    mp_connection: Any = connection
    # multiprocessing passes every process it starts its resource tracker's descriptor, and would start the
    # tracker (a third interpreter at every start) to have one. The tracker only unlinks the named semaphores
    # and shared memory a crashed process leaves; agents create neither (they talk over unix sockets), so its
    # descriptor is a sink instead.
    tracker: Any = resource_tracker._resource_tracker
    if tracker._fd is None:
        tracker._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    address = mp_connection.arbitrary_address("AF_UNIX")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        # Every client (this process, then each agent) holds the write end; when all are gone the forkserver
        # reads EOF and exits.
        alive_r, alive_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the forkserver
            code = 0
            try:
                os.close(alive_w)
                from qe_appliance.proctitle import set_title

                set_title("forkserver")
                for name in PRELOAD:
                    importlib.import_module(name)
                multiprocessing.forkserver.main(listener.fileno(), alive_r, [])
            except SystemExit:
                pass
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(alive_r)
    # What multiprocessing's ensure_running would have recorded had it started the forkserver itself.
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
