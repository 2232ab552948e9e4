"""The data every benchmark peer serves: the seeded `bench` namespace in `<stateDir>/memory.db` and the
qe_memory_retrieve result built from it, as our server shapes it. Needs only the appliance's MemoryStore.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # Peers import the appliance's MemoryStore from the working tree, wherever they are started from.
    sys.path.insert(0, str(REPO))

from qe_appliance.store.memory import MemoryStore  # noqa: E402

SEED_NAMESPACE = "bench"
SEED_KEY_PREFIX = "key-"


def seed(state_dir: Path, count: int, namespace: str = SEED_NAMESPACE, key_prefix: str = SEED_KEY_PREFIX) -> None:
    """Write `count` small JSON entries (`key_prefix`0 ..) into `<state_dir>/memory.db`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    store = MemoryStore(state_dir / "memory.db")
    try:
        for i in range(count):
            value = {
                "index": i,
                "verdict": "pass",
                "coverage": round(0.8 + (i % 20) / 100, 2),
                "tags": ["bench", "seed"],
            }
            store.put(namespace, f"{key_prefix}{i}", json.dumps(value).encode(), None)
    finally:
        store.close()


def iso_utc(epoch: float) -> str:
    """Epoch seconds as our server writes timestamps: ISO 8601 in UTC with a Z suffix."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def retrieve_result(store: MemoryStore, key: str, namespace: str) -> dict[str, Any]:
    """The result our server's qe_memory_retrieve returns, built from the same store."""
    entry = store.get(namespace, key)
    if entry is None:
        return {"found": False, "key": key, "namespace": namespace}
    return {
        "found": True,
        "key": entry.key,
        "namespace": entry.namespace,
        "value": json.loads(entry.value_json),
        "version": entry.version,
        "createdAt": iso_utc(entry.created_at),
        "updatedAt": iso_utc(entry.updated_at),
        "expiresAt": None if entry.expires_at is None else iso_utc(entry.expires_at),
    }
