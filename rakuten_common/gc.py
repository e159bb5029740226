"""``python -m rakuten_common.gc``: find (and with ``--delete``, remove) orphan version prefixes.

A training run killed while publishing leaves ``<model uri>/<version>/`` without its
``manifest.json``: never loaded, never overwritten, and kept forever. This command lists such
prefixes whose newest file is older than ``--min-age-hours`` (so a publish in progress is
never touched), with their size, and removes them only with ``--delete``. Complete versions
are never touched.

    python -m rakuten_common.gc --model-uri s3://rakuten-models/rakuten-classifier            # dry run
    python -m rakuten_common.gc --model-uri s3://rakuten-models/rakuten-classifier --delete

Exit codes: 0 done (also when nothing was found), 1 storage error.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

from rakuten_common.bundle import MANIFEST_FILE
from rakuten_common.logs import configure_logging
from rakuten_common.storage import StorageError, Store, open_store

logger = logging.getLogger("rakuten.gc")


@dataclass
class Orphan:
    version: str
    files: int
    bytes: int
    age_hours: float


def find_orphans(store: Store, min_age_hours: float, now: float | None = None) -> list[Orphan]:
    """Version prefixes without a manifest whose newest object is at least ``min_age_hours`` old."""
    now = time.time() if now is None else now
    orphans = []
    for version in store.list_versions():
        if store.exists(f"{version}/{MANIFEST_FILE}"):
            continue
        objects = store.list_objects(version)
        newest = max((o.modified for o in objects), default=0.0)
        age = (now - newest) / 3600
        if not objects:
            continue
        if age < min_age_hours:
            logger.info("keeping %s: incomplete but written %.1f h ago (a publish may be in progress)", version, age)
            continue
        orphans.append(Orphan(version, len(objects), sum(o.bytes for o in objects), age))
    return orphans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rakuten_common.gc", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", required=True, help="prefix of versions, local or s3://bucket/prefix")
    parser.add_argument("--min-age-hours", type=float, default=24.0,
                        help="only prefixes whose newest file is older than this (default: 24)")
    parser.add_argument("--delete", action="store_true", help="remove them (default: only list them)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        store = open_store(args.model_uri)
        orphans = find_orphans(store, args.min_age_hours)
        for orphan in orphans:
            action = "deleting" if args.delete else "would delete"
            logger.info("%s orphan version %s: %d file(s), %.2f MB, no %s, newest file %.1f h old", action,
                        orphan.version, orphan.files, orphan.bytes / 1e6, MANIFEST_FILE, orphan.age_hours)
            if args.delete:
                store.delete_prefix(orphan.version)
        total = sum(o.bytes for o in orphans) / 1e6
        logger.info("%d orphan version prefix(es), %.2f MB, under %s%s", len(orphans), total, store.uri,
                    "" if args.delete or not orphans else " (dry run: add --delete to remove them)")
    except StorageError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
