"""The champion pointer: which version of a model store is in production.

``<prefix>/champion.json`` sits next to the versions it chooses from::

    {"name": "rakuten-classifier", "version": "20261129T041502Z",
     "uri": "s3://rakuten-models/rakuten-classifier/20261129T041502Z",
     "registry_version": "7", "promoted_at": "2026-11-29T04:31:07Z", "promoted_by": "gate"}

The promotion command (``training_job.promote``) writes it in one PUT (atomic on S3 and, by a
rename, on a local folder), after moving the registry's ``champion`` alias; a model server
given the prefix loads the version it names (``rakuten_common.model_uri``). What a store holds
is not trusted: the pointer is size-bounded and its version must be a valid version name.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME, VERSION_PATTERN
from rakuten_common.errors import PointerError
from rakuten_common.jsondoc import load_object
from rakuten_common.storage import StorageError, Store

CHAMPION_FILE = "champion.json"
#: A real pointer is about 300 bytes.
MAX_POINTER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ChampionPointer:
    version: str                 # the version folder under the prefix
    uri: str                     # that folder's full URI
    registry_version: str | None = None
    promoted_at: str = ""
    promoted_by: str = ""        # gate, force or rollback
    name: str = MODEL_NAME

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_pointer(text: bytes | str, where: str) -> ChampionPointer:
    """A ``ChampionPointer`` from the pointer's bytes, every field checked."""
    data = load_object(text, MAX_POINTER_BYTES, lambda problem: PointerError(f"{where} is not a champion pointer: "
                                                                               f"{problem}"))
    if not isinstance(data.get("version"), str) or not isinstance(data.get("uri"), str):
        raise PointerError(f"{where} needs string fields 'version' and 'uri'")
    if not VERSION_PATTERN.match(data["version"]):
        raise PointerError(f"{where} names an invalid version {data['version'][:80]!r}")
    optional = {key: str(data[key]) for key in ("registry_version", "promoted_at", "promoted_by", "name")
                if data.get(key) is not None}
    return ChampionPointer(version=data["version"], uri=data["uri"], **optional)


def read_pointer(store: Store) -> ChampionPointer | None:
    """The pointer of ``store`` (a prefix of versions), ``None`` if it has none."""
    if not store.exists(CHAMPION_FILE):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / CHAMPION_FILE
        store.get_file(CHAMPION_FILE, local)
        if local.stat().st_size > MAX_POINTER_BYTES:
            raise PointerError(f"{store.uri}/{CHAMPION_FILE} is larger than {MAX_POINTER_BYTES} bytes")
        return parse_pointer(local.read_bytes(), f"{store.uri}/{CHAMPION_FILE}")


def write_pointer(store: Store, pointer: ChampionPointer) -> None:
    """Replace the pointer of ``store`` in one write."""
    if not VERSION_PATTERN.match(pointer.version):
        raise PointerError(f"invalid version {pointer.version!r}")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / CHAMPION_FILE
        local.write_text(pointer.to_json())
        try:
            store.put_file(CHAMPION_FILE, local)
        except (OSError, StorageError) as exc:
            raise PointerError(f"cannot write {store.uri}/{CHAMPION_FILE}: {exc}") from exc
