"""Live reload: compare the running configuration with a new one and apply only what changed.

Everything that lives in memory is changed in place (pool sizes and timeouts, balancer strategy, registry
cache, enabled tools, limits, thresholds, tokens); what needs a new socket or directory (listen address, state
directory, control socket) is reported as needing a restart. No request is dropped: objects are mutated
between requests on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from qe_appliance.config import Config
from qe_appliance.http.guard import load_tokens

if TYPE_CHECKING:
    from qe_appliance.app import App
    from qe_appliance.http.server import HttpServer

# Changes that only a restart can apply.
RESTART_KEYS = (
    "server.host",
    "server.port",
    "server.stateDir",
    "server.controlSocket",
    "fleet.runtimeDir",
    "fleet.preload",
)


def diff(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """Changed leaves as (camelCase key path, old value, new value)."""
    return sorted(_diff(msgspec.to_builtins(old), msgspec.to_builtins(new), ""))


def _diff(old: Any, new: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            yield from _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
    elif old != new:
        yield path, old, new


async def apply(app: App, new: Config) -> dict[str, Any]:
    """Apply `new` to the running appliance; returns what changed, what was applied and what waits."""
    # Token files are re-read on every reload (a rotated file changes no key); a bad one refuses the reload.
    tokens = load_tokens(new.server.auth) if app.routes is not None else ()
    changes = diff(app.config, new)
    keys = [key for key, _, _ in changes]
    restart = sorted(k for k in keys if k.startswith(RESTART_KEYS))
    applied = [k for k in keys if k not in restart]
    app.config = new
    services = app.services
    if services is not None:
        services.config = new
        services.fleet_enabled = True  # runtime overrides end with a reload; the file is the truth
    _apply_server_limits(app, new, tokens)
    if any(k.startswith(("tools.", "registry.")) for k in applied):
        app.rebuild_registry()
    fleet = services.fleet if services is not None else None
    if fleet is not None:
        fleet.config = new
        pool, cfg = fleet.pool, new.pool
        pool.max_connections = cfg.max_connections
        pool.min_connections = cfg.min_connections
        pool.idle_timeout_s = cfg.idle_timeout_ms / 1000
        fleet.balancer.strategy = new.balancer.strategy
        fleet.balancer.capacity_aware = new.balancer.capacity_aware
        fleet.max_agents = new.fleet.max_agents
        if any(k.startswith("fleet.agents") for k in applied):
            await fleet.ensure({str(kind): n for kind, n in new.fleet.agents.items()})
    if app.monitor is not None:
        app.monitor.configure(new)
    return {
        "changed": [{"key": k, "old": o, "new": n} for k, o, n in changes],
        "applied": applied,
        "needsRestart": restart,
    }


def configure_http(http: HttpServer, config: Config) -> None:
    """Set the HTTP layer's limits from `server.*` (at start and on every reload)."""
    server, limits = config.server, http.limits
    limits.max_connections = server.max_connections
    limits.max_body_bytes = server.max_body_bytes
    limits.max_header_bytes = server.max_header_bytes
    limits.header_timeout_s = server.header_timeout_ms / 1000
    limits.keep_alive_timeout_s = server.keep_alive_timeout_ms / 1000


def _apply_server_limits(app: App, new: Config, tokens: tuple[bytes, ...]) -> None:
    server = new.server
    if app.http is not None:
        configure_http(app.http, new)
    app.dispatcher.max_json_depth = server.max_json_depth
    app.sessions.max_sessions = server.max_sessions
    app.sessions.idle_timeout_s = server.session_idle_timeout_ms / 1000
    if app.routes is not None:
        app.routes.policy.update(server.host, server.allowed_origins)
        app.routes.guard.configure(server.auth, tokens, server.rate_limit)
