"""`subscriptions/listen` (2026-07-28): a long-lived response stream of the notifications a client asked for.

The first message of a subscription is `notifications/subscriptions/acknowledged` with the filter the server
honours; every message after it carries the subscription id (the listen request's JSON-RPC id) in
`_meta["io.modelcontextprotocol/subscriptionId"]`. Over HTTP the POST's reply is the stream (SSE) and closing it
ends the subscription; over stdio the stream shares the connection and `notifications/cancelled` naming the
listen request ends it. When the server drains or stops it answers the listen request (a graceful end).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import msgspec

from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.inbound import Inbound, Reply
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.mcp.sessions import Session, offer

SUBSCRIPTION_ID: Final = "io.modelcontextprotocol/subscriptionId"
TASKS_EXTENSION: Final = "io.modelcontextprotocol/tasks"
# Filter flag -> the notification it lets through.
LIST_CHANGED: Final = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
# URIs or task ids one subscription may name: the filter is kept per listener, so it is bounded.
MAX_NAMED: Final = 1000


def declares_tasks(meta: dict[str, Any]) -> bool:
    """Whether a 2026-07-28 request's client capabilities declare the tasks extension."""
    capabilities = meta.get(rpc.META_CLIENT_CAPABILITIES)
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and TASKS_EXTENSION in extensions


class Listener(msgspec.Struct, eq=False):
    """One open subscription: its id, who opened it, what it asked for, and its outgoing queue."""

    id: Any
    principal: str | None
    kinds: frozenset[str]
    uris: frozenset[str]
    task_ids: frozenset[str]
    queue: asyncio.Queue[bytes | None] = msgspec.field(default_factory=asyncio.Queue)


class Subscriptions:
    """Every open subscription of this process, at most `max_listeners` (server.maxSubscriptions)."""

    def __init__(self, max_listeners: int) -> None:
        self.max_listeners = max_listeners
        self._listeners: set[Listener] = set()
        self._closed = False
        # Told "subscriptions" when a listen is refused for the bound (the appliance points it at its Monitor).
        self.on_refuse: Any = lambda reason: None

    def __len__(self) -> int:
        return len(self._listeners)

    # ---- publishing (any part of the server) -------------------------------------------------------

    def list_changed(self, flag: str) -> None:
        """Tell the subscriptions that asked for it (toolsListChanged, ...) that a list changed."""
        method = LIST_CHANGED[flag]
        for listener in self._listeners:
            if flag in listener.kinds:
                self._put(listener, method, {})

    def resource_changed(self, uri: str, new: bool) -> None:
        """A `Changes` listener: `notifications/resources/updated` to the subscriptions that named `uri`, and
        resources list-changed to those that asked for it when the resource is new."""
        for listener in self._listeners:
            if uri in listener.uris:
                self._put(listener, "notifications/resources/updated", {"uri": uri})
        if new:
            self.list_changed("resourcesListChanged")

    def task_status(self, task_id: str, principal: str | None, task: dict[str, Any]) -> None:
        """`notifications/tasks` (the tasks extension) with the whole task, to its owner's subscriptions that
        named it."""
        for listener in self._listeners:
            if task_id in listener.task_ids and listener.principal == principal:
                self._put(listener, "notifications/tasks", task)

    @staticmethod
    def _put(listener: Listener, method: str, params: dict[str, Any]) -> None:
        tagged = {**params, "_meta": {**params.get("_meta", {}), SUBSCRIPTION_ID: listener.id}}
        offer(listener.queue, rpc.notification_bytes(method, tagged))

    # ---- the listen request ------------------------------------------------------------------------

    async def listen(self, msg_id: Any, params: dict[str, Any], meta: dict[str, Any], exch: Inbound) -> Reply:
        """Serve one subscriptions/listen request until the client or the server ends it."""
        send = exch.send
        if send is None:
            raise RpcError(rpc.INVALID_REQUEST, "subscriptions/listen needs a transport that can stream")
        if self._closed:
            raise RpcError(rpc.INVALID_REQUEST, "the server is stopping; listen again on another instance",
                           http_status=503)
        if len(self._listeners) >= self.max_listeners:
            self.on_refuse("subscriptions")
            raise RpcError(
                rpc.INVALID_REQUEST,
                f"all {self.max_listeners} subscription streams (server.maxSubscriptions) are open; close one "
                "or retry later",
                http_status=503,
            )
        listener, honoured = _listener(msg_id, params, meta, exch.principal)
        self._listeners.add(listener)
        session = exch.session
        waiting = asyncio.ensure_future(self._stream(listener, honoured, send))
        if session is not None:
            # stdio: notifications/cancelled naming the listen request ends it, as it cancels a tool call.
            session.inflight[msg_id] = waiting
        try:
            await waiting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if waiting.cancelled() and not (current and current.cancelling()):
                return Reply(200, None)  # ended by the client: nothing to answer
            raise
        except ConnectionError:
            return Reply(200, None)  # the client went away mid-write
        finally:
            self._listeners.discard(listener)
            if session is not None:
                _forget(session, msg_id, waiting)
            waiting.cancel()
        # Ended by the server (drain, stop): answer the request so the client knows it ended gracefully.
        result = {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: msg_id}}
        return Reply(200, rpc.result_bytes(msg_id, result))

    @staticmethod
    async def _stream(listener: Listener, honoured: dict[str, Any], send: Any) -> None:
        ack = {"_meta": {SUBSCRIPTION_ID: listener.id}, "notifications": honoured}
        await send(rpc.notification_bytes("notifications/subscriptions/acknowledged", ack))
        while (event := await listener.queue.get()) is not None:
            await send(event)

    def close(self) -> None:
        """End every subscription gracefully (drain, stop, stdin closed) and refuse new ones."""
        self._closed = True
        for listener in self._listeners:
            listener.queue.put_nowait(None)


def _forget(session: Session, msg_id: Any, waiting: asyncio.Future[Any]) -> None:
    if session.inflight.get(msg_id) is waiting:
        del session.inflight[msg_id]


def _listener(msg_id: Any, params: dict[str, Any], meta: dict[str, Any], principal: str | None
              ) -> tuple[Listener, dict[str, Any]]:
    """The listener a filter asks for and the filter the server honours (what the acknowledgement says)."""
    wanted = params.get("notifications")
    if not isinstance(wanted, dict):
        raise RpcError(
            rpc.INVALID_PARAMS,
            "subscriptions/listen needs params.notifications, an object such as {\"toolsListChanged\": true}",
        )
    honoured: dict[str, Any] = {}
    kinds = []
    for flag in LIST_CHANGED:
        value = wanted.get(flag)
        if value is not None and not isinstance(value, bool):
            raise RpcError(rpc.INVALID_PARAMS, f"notifications.{flag} must be true or false; got {value!r}")
        if value:
            kinds.append(flag)
            honoured[flag] = True
    uris = _names(wanted, "resourceSubscriptions")
    if uris:
        honoured["resourceSubscriptions"] = uris
    task_ids = _names(wanted, "taskIds")
    if task_ids:
        if not declares_tasks(meta):
            raise RpcError(
                rpc.MISSING_CLIENT_CAPABILITY,
                "notifications.taskIds needs the tasks extension: declare "
                f"clientCapabilities.extensions[{TASKS_EXTENSION!r}]",
                {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}},
            )
        honoured["taskIds"] = task_ids
    listener = Listener(msg_id, principal, frozenset(kinds), frozenset(uris), frozenset(task_ids))
    return listener, honoured


def _names(wanted: dict[str, Any], key: str) -> list[str]:
    value = wanted.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RpcError(rpc.INVALID_PARAMS, f"notifications.{key} must be a list of strings")
    if len(value) > MAX_NAMED:
        raise RpcError(rpc.INVALID_PARAMS, f"notifications.{key} names {len(value)} items; at most {MAX_NAMED}")
    return list(dict.fromkeys(value))
