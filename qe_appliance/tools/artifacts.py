"""What a tool keeps for later reading (a generated test module, a result too large to send whole): stored
in the reports database with an id, served as an `aqe://` resource, and announced as a new resource."""

from __future__ import annotations

import secrets
import time

from qe_appliance.services import Services
from qe_appliance.store.database import retrying
from qe_appliance.store.reports import Artifact
from qe_appliance.tools.memory import store_failures
from qe_appliance.uris import result_uri, tests_uri

TEST_MODULE = "test-module"
RESULT = "result"
# Id prefix and URI of each kind.
KINDS = {TEST_MODULE: ("gen-", tests_uri), RESULT: ("res-", result_uri)}


async def keep(services: Services, kind: str, title: str, mime_type: str, body: bytes) -> str:
    """Store `body` as a new artifact of `kind`; returns its id. ToolError when the store fails."""
    prefix, uri = KINDS[kind]
    # 64 random bits: processes sharing the store draw ids independently without colliding.
    artifact_id = prefix + secrets.token_hex(8)
    reports = services.reports
    with store_failures(reports.path):
        await retrying(reports.put_artifact, Artifact(artifact_id, kind, title, mime_type, time.time()), body)
    services.changes.changed(uri(artifact_id), new=True)
    return artifact_id
