"""What tools reach through `ctx.services`: the configuration, the stores, the workspace, the fleet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qe_appliance.changes import Changes
from qe_appliance.config import Config
from qe_appliance.overrides import Overrides
from qe_appliance.store.stores import open_stores
from qe_appliance.workspace import Workspace

if TYPE_CHECKING:
    from qe_appliance.fleet.orchestrator import Orchestrator
    from qe_appliance.fleet.runtime import Fleet


class Services:
    """Shared state of one appliance; the App fills in the fleet and orchestrator (absent in unit tests)."""

    def __init__(self, config: Config, overrides: Overrides | None = None) -> None:
        self.config = config
        self.overrides = overrides or Overrides()
        # SQLite files in server.stateDir, or PostgreSQL at store.url (connected in App.start).
        self.stores = open_stores(config)
        self.memory = self.stores.memory
        self.patterns = self.stores.patterns
        self.tasks = self.stores.tasks
        self.reports = self.stores.reports
        # Files the coverage and quality tools may read; relative roots start from the start directory.
        server = config.server
        self.workspace = Workspace.from_config(server.workspace_roots, server.max_input_file_bytes)
        # Writers report changed resources here; the MCP layer notifies subscribed sessions.
        self.changes = Changes()
        self.fleet: Fleet | None = None
        self.orchestrator: Orchestrator | None = None

    def reconfigure(self, config: Config) -> None:
        # Stores and workspace roots keep their paths (a restart moves them); tools read limits from here.
        self.config = config

    def close(self) -> None:
        if self.orchestrator is not None:
            self.orchestrator.cancel_all()
        self.stores.close()
