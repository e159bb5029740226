"""Where model versions live: a local folder or an ``s3://bucket/prefix`` (MinIO, AWS S3).

S3 settings come from the variables KServe's storage initializer uses:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` or ``S3_ENDPOINT``
(``host:port`` completed with ``S3_USE_HTTPS``), ``S3_VERIFY_SSL``, ``AWS_DEFAULT_REGION``.
Every S3 call is bounded: ``S3_CONNECT_TIMEOUT`` (default 5 s) and ``S3_READ_TIMEOUT``
(default 30 s) per attempt, ``S3_MAX_ATTEMPTS`` attempts (default 4) with exponential backoff
and jitter on connection errors, timeouts, throttling and 5xx answers, each retry logged as
a warning. An unreachable endpoint fails in about half a minute with a clear error.

Everything read from a store is hostile: a key is a relative POSIX path of safe names
(``validate_key``), never ``..`` or absolute, so nothing is read or written outside a store
or a cache folder.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rakuten_common.env import env_bool
from rakuten_common.errors import StorageError

ProgressFn = Callable[[str], None]
logger = logging.getLogger("rakuten.storage")

#: One path component of a key: no separators, no leading dot (so no ``.``/``..``), bounded.
_SAFE_NAME = re.compile(r"^[0-9A-Za-z_][0-9A-Za-z._-]{0,127}$")
#: One path component of a key: a safe name, or a partition like ``date=2026-12-03`` (captures).
_KEY_PART = re.compile(r"^[0-9A-Za-z_][0-9A-Za-z._=-]{0,127}$")


class KeyExists(StorageError):
    """A write that must not replace an object found one there (``put_bytes(..., overwrite=False)``)."""


def validate_key(key: str) -> str:
    """``key`` if it is a relative path of safe names (``a/b.json``), else ``StorageError``."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise StorageError(f"invalid storage key {str(key)[:80]!r}")
    parts = key.split("/")
    if not all(_KEY_PART.match(part) for part in parts):
        raise StorageError(f"unsafe storage key {key[:200]!r}: each part of a key must match {_KEY_PART.pattern}")
    return key


def inside(folder: Path, key: str) -> Path:
    """``folder / key`` for a validated ``key``, checked to stay inside ``folder``."""
    path = (Path(folder) / validate_key(key)).resolve()
    if not path.is_relative_to(Path(folder).resolve()):
        raise StorageError(f"storage key {key!r} points outside {folder}")
    return path


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the store
    bytes: int
    modified: float  # seconds since the epoch


class Store(Protocol):
    """A flat namespace of keys (``<version>/<file>``) under one model prefix."""

    uri: str

    def exists(self, key: str) -> bool: ...
    def list_versions(self) -> list[str]: ...
    def has_prefix(self, prefix: str) -> bool: ...
    def put_file(self, key: str, source: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes, overwrite: bool = True) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_file(self, key: str, destination: Path) -> None: ...
    def list_objects(self, prefix: str) -> list[StoredObject]: ...
    def delete_prefix(self, prefix: str) -> int: ...


def _version_names(names, where: str) -> list[str]:
    """Folder names that can be versions; others are skipped with a warning, never used."""
    good = []
    for name in names:
        if _SAFE_NAME.match(name):
            good.append(name)
        else:
            logger.warning("ignoring %r in %s: not a valid version name", name[:80], where)
    return sorted(good)


class LocalStore:
    """Keys are files below a root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def exists(self, key: str) -> bool:
        return inside(self.root, key).is_file()

    def list_versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return _version_names([p.name for p in self.root.iterdir() if p.is_dir()], self.uri)

    def has_prefix(self, prefix: str) -> bool:
        return inside(self.root, prefix.rstrip("/")).exists()

    def put_file(self, key: str, source: Path) -> None:
        target = inside(self.root, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial_path(target)
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes, overwrite: bool = True) -> None:
        """Write ``data`` at ``key`` (atomically); with ``overwrite=False``, ``KeyExists`` if it is taken."""
        target = inside(self.root, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial_path(target)
        partial.write_bytes(data)
        try:
            if overwrite:
                os.replace(partial, target)
                return
            try:
                os.link(partial, target)  # atomic, fails if the name is taken
            except FileExistsError:
                raise KeyExists(f"{target} exists already") from None
        finally:
            partial.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        source = inside(self.root, key)
        if not source.is_file():
            raise StorageError(f"{source} does not exist")
        return source.read_bytes()

    def get_file(self, key: str, destination: Path) -> None:
        source = inside(self.root, key)
        if not source.is_file():
            raise StorageError(f"{source} does not exist")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Complete objects under ``prefix``: like S3, a write in progress is not listed."""
        folder, root = inside(self.root, prefix.rstrip("/")), self.root.resolve()  # inside() resolves: so must we
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.rglob("*")):
            if _is_partial(path):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted while we listed
                continue
            if path.is_file():
                found.append(StoredObject(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime))
        return found

    def delete_prefix(self, prefix: str) -> int:
        folder = inside(self.root, prefix.rstrip("/"))
        count = len(self.list_objects(prefix))
        shutil.rmtree(folder, ignore_errors=False) if folder.is_dir() else None
        return count


_PARTIAL_SUFFIX = ".partial"


def _partial_path(target: Path) -> Path:
    """A hidden name beside ``target`` for writing it, unique to this process and thread."""
    return target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}{_PARTIAL_SUFFIX}")


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(_PARTIAL_SUFFIX)


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        raise StorageError(f"environment variable {name}={value!r} is not a number") from None


def s3_client(max_pool_connections: int = 10, connect_timeout: float | None = None,
              read_timeout: float | None = None):
    """A boto3 S3 client configured from the environment, the way KServe configures MinIO access.

    Its connect/read timeouts are bounded (the arguments replace the environment's); retries are
    done by ``S3Store`` (logged), not by botocore. One client serves many threads; give it as many
    connections as threads using it."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT")
    if endpoint and "://" not in endpoint:
        endpoint = ("https://" if env_bool("S3_USE_HTTPS", True) else "http://") + endpoint
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        verify=env_bool("S3_VERIFY_SSL", True),
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                      connect_timeout=connect_timeout or _env_number("S3_CONNECT_TIMEOUT", 5.0),
                      read_timeout=read_timeout or _env_number("S3_READ_TIMEOUT", 30.0),
                      max_pool_connections=max_pool_connections),
    )


_RETRYABLE_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "Throttling",
                    "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"}


def _retryable(exc: Exception) -> bool:
    from boto3.exceptions import S3TransferFailedError
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code")) in _RETRYABLE_CODES
    return isinstance(exc, (BotoConnectionError, HTTPClientError, S3TransferFailedError))


class S3Store:
    """Keys are objects below ``s3://bucket/prefix/``."""

    def __init__(self, bucket: str, prefix: str, client=None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client or s3_client()
        self.attempts = max(1, int(_env_number("S3_MAX_ATTEMPTS", 4)))
        self.backoff = 0.5  # seconds before the first retry, doubled each time

    def _key(self, key: str) -> str:
        validate_key(key.rstrip("/"))
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn):
        """``fn()`` with bounded, logged retries; any failure becomes a ``StorageError``."""
        from boto3.exceptions import S3TransferFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except (BotoCoreError, ClientError, S3TransferFailedError) as exc:
                if attempt == self.attempts or not _retryable(exc):
                    tried = f" after {attempt} attempts" if attempt > 1 else ""
                    raise StorageError(f"S3 {what} in {self.uri} failed{tried}: {exc}") from exc
                pause = self.backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                logger.warning("S3 %s in %s failed (attempt %d of %d): %s; retrying in %.1f s", what, self.uri,
                               attempt, self.attempts, exc, pause)
                time.sleep(pause)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head():
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True

        return self._call(f"head {key}", head)

    def list_versions(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""

        def listing():
            names = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=base, Delimiter="/"):
                names += [p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return names

        return _version_names(self._call("listing", listing), self.uri)

    def has_prefix(self, prefix: str) -> bool:
        key = self._key(prefix.rstrip("/")) + "/"
        answer = self._call(f"listing {prefix}", lambda: self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=key, MaxKeys=1))
        return answer.get("KeyCount", 0) > 0

    def put_file(self, key: str, source: Path) -> None:
        self._call(f"upload of {key}", lambda: self.client.upload_file(str(source), self.bucket, self._key(key)))

    def put_bytes(self, key: str, data: bytes, overwrite: bool = True) -> None:
        """One PUT of ``data``; with ``overwrite=False`` it is conditional (``If-None-Match: *``, MinIO and
        AWS S3) and ``KeyExists`` says the key is taken: no read permission needed."""
        from botocore.exceptions import ClientError

        condition = {} if overwrite else {"IfNoneMatch": "*"}

        def put() -> bool:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except ClientError as exc:
                if not overwrite and exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                    return False
                raise
            return True

        if not self._call(f"upload of {key}", put):
            raise KeyExists(f"{self.uri}/{key} exists already")

    def get_bytes(self, key: str) -> bytes:
        return self._call(f"download of {key}", lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def get_file(self, key: str, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        self._call(f"download of {key}",
                   lambda: self.client.download_file(self.bucket, self._key(key), str(destination)))

    def list_objects(self, prefix: str) -> list[StoredObject]:
        base = self._key(prefix.rstrip("/")) + "/"
        strip = len(f"{self.prefix}/") if self.prefix else 0

        def listing():
            found = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                found += [StoredObject(o["Key"][strip:], o["Size"], o["LastModified"].timestamp())
                          for o in page.get("Contents", [])]
            return found

        return self._call(f"listing {prefix}", listing)

    def delete_prefix(self, prefix: str) -> int:
        objects = self.list_objects(prefix)
        for start in range(0, len(objects), 1000):
            chunk = [{"Key": self._key(o.key)} for o in objects[start:start + 1000]]
            self._call(f"deletion in {prefix}", lambda chunk=chunk: self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}))
        return len(objects)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise StorageError(f"not an s3://bucket/prefix URI: {uri!r}")
    return bucket, prefix.strip("/")


def open_store(uri: str | Path) -> Store:
    """``s3://bucket/prefix`` -> ``S3Store``; a path or ``file://`` path -> ``LocalStore``."""
    uri = str(uri)
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise StorageError(f"no bucket in storage URI {uri!r}")
        return S3Store(bucket, prefix)
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")
    return LocalStore(Path(uri.removeprefix("file://")))
