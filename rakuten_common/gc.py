"""``python -m rakuten_common.gc``: find (and on request remove) versions nobody will serve.

Orphans: a training run killed while publishing leaves ``<model uri>/<version>/`` without its
``manifest.json``: never loaded, kept forever. This command lists such prefixes whose newest
file is older than ``--min-age-hours`` (so a publish in progress is never touched), with their
size, and removes them only with ``--delete``.

Unregistered versions (while a registry is configured, ``MLFLOW_TRACKING_URI`` set): a version
complete in storage that the MLflow registry does not know (MLflow was down when its job
finished, exit 5, or the job was killed between ``manifest.json`` and registration). The gate
never judged it and serving never picks it as the newest; it is listed with the command that
registers it (``python -m training_job.register VERSION``), and removed only with
``--delete-unregistered`` (when older than ``--min-age-hours``; never the champion pointer's
version). MLflow runs of ``--experiment`` left RUNNING by a killed job (their version complete in
storage, or started more than ``--min-age-hours`` ago) are marked FAILED. Every registry call is
bounded by ``--tracking-timeout``.

    python -m rakuten_common.gc --model-uri s3://rakuten-models/rakuten-classifier            # dry run
    python -m rakuten_common.gc --model-uri s3://rakuten-models/rakuten-classifier --delete

Exit codes: 0 done (also when nothing was found), 1 storage or registry error.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.artifacts import candidate_versions, created_at
from rakuten_common.bundle import MANIFEST_FILE, MODEL_NAME, Manifest
from rakuten_common.champion import read_pointer
from rakuten_common.errors import ArtifactError, PointerError
from rakuten_common.logs import configure_logging
from rakuten_common.model_uri import registered_versions
from rakuten_common.storage import StorageError, Store, open_store
from rakuten_common.tracking_server import (
    DEFAULT_TRACKING_TIMEOUT,
    TRACKING_TIMEOUT,
    TRACKING_TIMEOUT_HELP,
    VERSION_TAG,
    bound_tracking_calls,
    error_line,
    fail_abandoned_runs,
    tracking_uri,
)

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


@dataclass
class Unregistered:
    version: str
    created_at: str
    age_hours: float


def find_unregistered(store: Store, registered: set[str], now: float | None = None) -> list[Unregistered]:
    """Complete versions of ``store`` (a readable manifest) whose id is not in ``registered``."""
    now = time.time() if now is None else now
    found = []
    with tempfile.TemporaryDirectory() as scratch:
        for version, manifest in candidate_versions(store, Path(scratch)):
            if version in registered or not isinstance(manifest, Manifest):
                continue
            found.append(Unregistered(version, manifest.created_at, (now - created_at(manifest).timestamp()) / 3600))
    return found


def fail_stale_runs(store: Store, experiment: str, min_age_hours: float, now: float | None = None) -> list[str]:
    """Mark FAILED the training runs left RUNNING by killed jobs (see the module docstring)."""
    from mlflow import MlflowClient

    now = time.time() if now is None else now
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []

    def abandoned(run) -> bool:
        version = run.data.tags.get(VERSION_TAG)
        complete = bool(version) and store.exists(f"{version}/{MANIFEST_FILE}")
        return complete or (now - run.info.start_time / 1000) / 3600 >= min_age_hours

    return fail_abandoned_runs(client, found.experiment_id, abandoned, "rakuten_common.gc")


def collect_unregistered(store: Store, args: argparse.Namespace) -> list[Unregistered]:
    """List (and with ``--delete-unregistered`` remove) the unregistered versions, return those kept;
    mark stale runs FAILED."""
    from mlflow.exceptions import MlflowException

    registered = registered_versions(MODEL_NAME, tracking_uri())
    pointer = read_pointer(store)
    unregistered = find_unregistered(store, registered)
    for item in list(unregistered):
        where = f"{store.uri}/{item.version}"
        if args.delete_unregistered and item.age_hours >= args.min_age_hours \
                and not (pointer and pointer.version == item.version):
            logger.info("deleting unregistered version %s: complete in storage, unknown to the registry, "
                        "published %.1f h ago", where, item.age_hours)
            store.delete_prefix(item.version)
            unregistered.remove(item)
            continue
        kept = (" (the champion pointer names it: never deleted)" if pointer and pointer.version == item.version
                else f" (kept: published {item.age_hours:.1f} h ago, under --min-age-hours)"
                if args.delete_unregistered else "")
        logger.warning("version %s is complete in storage, unknown to the registry%s: register it (python -m "
                       "training_job.register %s --model-uri %s) or delete it (--delete-unregistered)", where, kept,
                       item.version, store.uri)
    try:
        fail_stale_runs(store, args.experiment, args.min_age_hours)
    except MlflowException as exc:
        raise ArtifactError(f"MLflow tracking, marking abandoned runs FAILED: {error_line(exc)}") from None
    return unregistered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rakuten_common.gc",
                                     description="\n\n".join(__doc__.split("\n\n")[i] for i in (1, 2, -1)),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", required=True, help="prefix of versions, local or s3://bucket/prefix")
    parser.add_argument("--min-age-hours", type=float, default=24.0,
                        help="only prefixes whose newest file is older than this (default: 24)")
    parser.add_argument("--delete", action="store_true", help="remove the orphans (default: only list them)")
    parser.add_argument("--delete-unregistered", action="store_true",
                        help="remove the complete versions the registry does not know (needs MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME") or MODEL_NAME,
                        help="the training runs' MLflow experiment (default: rakuten-classifier; env "
                             "MLFLOW_EXPERIMENT_NAME)")
    parser.add_argument("--tracking-timeout", type=TRACKING_TIMEOUT, metavar="SECONDS",
                        default=os.environ.get("TRACKING_TIMEOUT") or DEFAULT_TRACKING_TIMEOUT,
                        help=f"{TRACKING_TIMEOUT_HELP} (default: {DEFAULT_TRACKING_TIMEOUT}; env TRACKING_TIMEOUT)")
    args = parser.parse_args(argv)
    if args.delete_unregistered and not tracking_uri():
        parser.error("--delete-unregistered needs a registry: set MLFLOW_TRACKING_URI")
    configure_logging()
    bound_tracking_calls(args.tracking_timeout)
    try:
        store = open_store(args.model_uri)
        unregistered = collect_unregistered(store, args) if tracking_uri() else []
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
        if tracking_uri():
            logger.info("%d complete version(s) unknown to the registry under %s", len(unregistered), store.uri)
    except (StorageError, ArtifactError, PointerError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
