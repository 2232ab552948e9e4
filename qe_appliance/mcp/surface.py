"""Everything MCP offers besides tools, as one method table both eras dispatch through: resources (with
handshake-era subscriptions), prompts and completions."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.completion import Completions
from qe_appliance.mcp.inbound import Method, MethodCall
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.mcp.prompts import Prompts
from qe_appliance.mcp.resources import Resources
from qe_appliance.mcp.sessions import SessionTable
from qe_appliance.mcp.sizing import links_supported
from qe_appliance.mcp.updates import ResourceUpdates
from qe_appliance.services import Services
from qe_appliance.store.database import StoreError
from qe_appliance.tools.base import ToolContext


class Surface:
    def __init__(
        self,
        services: Services,
        sessions: SessionTable,
        context_for: Callable[[str], ToolContext],
        dashboard: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.resources = Resources(services, context_for, dashboard)
        self.prompts = Prompts(self.resources)
        self.completions = Completions(self.resources, self.prompts)
        self.updates = ResourceUpdates(services.changes, sessions)

    def methods(self) -> dict[str, Method]:
        table: dict[str, Method] = {
            "resources/list": self._list_resources,
            "resources/templates/list": self._list_templates,
            "resources/read": self._read,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "prompts/list": self._list_prompts,
            "prompts/get": self._get_prompt,
            "completion/complete": self._complete,
        }
        return {name: _store_failures(method) for name, method in table.items()}

    async def _list_resources(self, call: MethodCall) -> dict[str, Any]:
        return await self.resources.listing(call.params.get("cursor"), call.modern)

    async def _list_templates(self, call: MethodCall) -> dict[str, Any]:
        return self.resources.templates(call.params.get("cursor"), call.modern)

    async def _read(self, call: MethodCall) -> dict[str, Any]:
        return await self.resources.read(call.params.get("uri"), call.modern, call.exch.principal)

    async def _subscribe(self, call: MethodCall) -> dict[str, Any]:
        session, uri = self._subscription(call)
        # Only what exists can be watched: the same not-found error a read gives.
        await self.resources.contents(uri, False, call.exch.principal)
        self.updates.subscribe(session, uri)
        return {}

    async def _unsubscribe(self, call: MethodCall) -> dict[str, Any]:
        session, uri = self._subscription(call)
        self.updates.unsubscribe(session, uri)
        return {}

    @staticmethod
    def _subscription(call: MethodCall) -> tuple[Any, str]:
        if call.modern or call.session is None:
            raise RpcError(
                rpc.METHOD_NOT_FOUND,
                "resources/subscribe is not in protocol 2026-07-28: use subscriptions/listen with "
                "notifications.resourceSubscriptions",
            )
        uri = call.params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise RpcError(rpc.INVALID_PARAMS, "params.uri must be the URI of a resource (see resources/list)")
        return call.session, uri

    async def _list_prompts(self, call: MethodCall) -> dict[str, Any]:
        return self.prompts.listing(call.params.get("cursor"), call.modern)

    async def _get_prompt(self, call: MethodCall) -> dict[str, Any]:
        session = call.session
        links = call.modern or session is None or links_supported(session.protocol_version)
        return await self.prompts.get(call.params.get("name"), call.params.get("arguments"), links, call.exch.principal)

    async def _complete(self, call: MethodCall) -> dict[str, Any]:
        return await self.completions.complete(call.params)


def _store_failures(method: Method) -> Method:
    """A store that fails (busy past its deadline, gone, unreachable) answers -32603 saying so, not a traceback."""

    async def guarded(call: MethodCall) -> dict[str, Any]:
        try:
            return await method(call)
        except (StoreError, sqlite3.Error) as exc:
            raise RpcError(rpc.INTERNAL_ERROR, f"the store failed: {exc}; retry, and see the server log if it "
                           "persists") from exc

    return guarded
