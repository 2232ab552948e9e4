"""An agent: a worker process serving compute calls on a unix socket, one thread per connection.

Started from the forkserver (tool modules preloaded, so a new agent is ready in milliseconds). It runs
until its parent closes the listening socket or sends SIGTERM; it never touches the server's databases.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence

from qe_appliance.fleet import rpc
from qe_appliance.fleet.compute import lookup
from qe_appliance.proctitle import set_title
from qe_appliance.tools.base import ToolError

# Marks an error that is the caller's input, not the agent's fault (it does not count toward ejection).
INPUT_ERROR = "input: "


def _serve_connection(conn: socket.socket) -> None:
    with conn:
        while True:
            try:
                raw = rpc.recv_frame(conn)
            except (OSError, ValueError):
                return
            if raw is None:
                return
            try:
                call = rpc.call_decoder.decode(raw)
            except Exception as exc:  # a malformed frame ends this connection only
                conn.sendall(rpc.frame(rpc.Result(0, False, error=f"bad request frame: {exc}")))
                return
            conn.sendall(rpc.frame(_run(call)))


def _run(call: rpc.Call) -> rpc.Result:
    try:
        if call.op == "ping":
            return rpc.Result(call.id, True, os.getpid())
        if call.op == "sleep":  # lets tests hold an agent busy or make it hang
            time.sleep(float(call.payload))
            return rpc.Result(call.id, True, None)
        if call.op == "call":
            return rpc.Result(call.id, True, lookup(call.fn)(call.payload))
        return rpc.Result(call.id, False, error=f"unknown op {call.op!r}")
    except ToolError as exc:
        return rpc.Result(call.id, False, error=INPUT_ERROR + str(exc))
    except Exception as exc:
        # The message travels back to the caller; the traceback stays in this agent's stderr.
        traceback.print_exc(file=sys.stderr)
        return rpc.Result(call.id, False, error=f"{type(exc).__name__}: {exc}")


def main(socket_path: str, agent_id: str, preload: Sequence[str] = ()) -> None:
    """Entry point in the agent process; `preload` names plugin modules (fleet.preload) to import."""
    _release_forkserver()
    set_title(multiprocessing.current_process().name)  # "agent-2 generalist", named so by the fleet
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    for module in preload:
        importlib.import_module(module)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server, which stops us in order
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(128)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(conn,), daemon=True, name=f"{agent_id}-conn").start()


def _release_forkserver() -> None:
    """Close our copy of the forkserver's "alive" pipe.

    CPython hands every forked child that pipe's write end, so the forkserver lives as long as any agent,
    while agents live as long as the forkserver (their parent): after a kill -9 of the server neither
    would ever exit. Without our copy, the forkserver ends with the server and the agents follow it.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        try:
            os.close(fd)
        except OSError:
            pass
        setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 (a private attribute of CPython's)


def _watch_parent(parent: int) -> None:
    # The forkserver is our parent and exits with the server, even on kill -9: then so do we.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
