"""Where model versions live: a local folder or an ``s3://bucket/prefix`` (MinIO, AWS S3).

S3 settings come from the variables KServe's storage initializer uses:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` or ``S3_ENDPOINT``
(``host:port`` completed with ``S3_USE_HTTPS``), ``S3_VERIFY_SSL``, ``AWS_DEFAULT_REGION``.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Protocol

ProgressFn = Callable[[str], None]


class StorageError(RuntimeError):
    """A storage URI that cannot be read or written as asked."""


class Store(Protocol):
    """A flat namespace of keys (``<version>/<file>``) under one model prefix."""

    uri: str

    def exists(self, key: str) -> bool: ...
    def list_versions(self) -> list[str]: ...
    def has_prefix(self, prefix: str) -> bool: ...
    def put_file(self, key: str, source: Path) -> None: ...
    def get_file(self, key: str, destination: Path) -> None: ...


class LocalStore:
    """Keys are files below a root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def list_versions(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def has_prefix(self, prefix: str) -> bool:
        return (self.root / prefix).exists()

    def put_file(self, key: str, source: Path) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)

    def get_file(self, key: str, destination: Path) -> None:
        if not self.exists(key):
            raise StorageError(f"{self.root / key} does not exist")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / key, destination)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "")


def s3_client(max_pool_connections: int = 10):
    """A boto3 S3 client configured from the environment, the way KServe configures MinIO access.

    One client serves many threads; give it as many connections as threads using it."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT")
    if endpoint and "://" not in endpoint:
        endpoint = ("https://" if _env_flag("S3_USE_HTTPS", True) else "http://") + endpoint
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        verify=_env_flag("S3_VERIFY_SSL", True),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"},
                      max_pool_connections=max_pool_connections),
    )


class S3Store:
    """Keys are objects below ``s3://bucket/prefix/``."""

    def __init__(self, bucket: str, prefix: str, client=None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client or s3_client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, what: str):
        from botocore.exceptions import BotoCoreError, ClientError
        from boto3.exceptions import S3TransferFailedError

        try:
            yield
        except (BotoCoreError, ClientError, S3TransferFailedError) as exc:
            raise StorageError(f"S3 {what} in {self.uri} failed: {exc}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(f"head {key}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def list_versions(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        versions = []
        with self._errors("listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/")
            for page in pages:
                versions += [p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(versions)

    def has_prefix(self, prefix: str) -> bool:
        with self._errors(f"listing {prefix}"):
            answer = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._key(prefix.rstrip("/") + "/"), MaxKeys=1)
        return answer.get("KeyCount", 0) > 0

    def put_file(self, key: str, source: Path) -> None:
        with self._errors(f"upload of {key}"):
            self.client.upload_file(str(source), self.bucket, self._key(key))

    def get_file(self, key: str, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(f"download of {key}"):
            self.client.download_file(self.bucket, self._key(key), str(destination))


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
        return S3Store(*split_s3_uri(uri))
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")
    return LocalStore(Path(uri.removeprefix("file://")))
