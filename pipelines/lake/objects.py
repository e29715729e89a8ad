"""Artifacts beside the tables (Data Docs, reports): a local folder or ``s3://`` via boto3.

Tables go through delta-rs; everything else a job writes under the storage root goes through
this one adapter, so a remote root works the same for every artifact. Credentials come from
``storage.s3`` (or the standard AWS chain) and are never logged.
"""

from __future__ import annotations

import mimetypes
import shutil
from pathlib import Path
from typing import Any

import boto3

from pipelines.config import StorageSettings


class ObjectStore:
    """Put and get files under ``<storage root>/<key>``."""

    def __init__(self, storage: StorageSettings) -> None:
        self.storage = storage.resolved()
        root = self.storage.root
        self.remote = root.startswith("s3://")
        if "://" in root and not self.remote:
            raise ValueError(f"storage.root {root}: only local paths and s3:// are supported")
        self._client: Any = None
        if self.remote:
            self.bucket, _, prefix = root.removeprefix("s3://").partition("/")
            self.prefix = prefix.strip("/")

    def uri(self, key: str) -> str:
        return f"{self.storage.root.rstrip('/')}/{key.lstrip('/')}"

    def put_file(self, local: Path, key: str) -> str:
        """Copy ``local`` to ``key``; returns the object's URI (or local path)."""
        if not self.remote:
            target = Path(self.uri(key))
            if target.resolve() != local.resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, target)
            return str(target)
        content_type = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
        self.client.upload_file(
            str(local), self.bucket, self._key(key), ExtraArgs={"ContentType": content_type}
        )
        return self.uri(key)

    def put_tree(self, local_dir: Path, key: str, since: dict[str, float] | None = None) -> int:
        """Copy a folder's files under ``key``; with ``since`` (path -> mtime, updated in place)
        only files new or changed since the last call. Returns the number copied."""
        copied = 0
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(local_dir).as_posix()
            mtime = path.stat().st_mtime
            if since is not None and since.get(relative) == mtime:
                continue
            self.put_file(path, f"{key.rstrip('/')}/{relative}")
            copied += 1
            if since is not None:
                since[relative] = mtime
        return copied

    def get_bytes(self, key: str) -> bytes:
        if not self.remote:
            return Path(self.uri(key)).read_bytes()
        response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        body: bytes = response["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        if not self.remote:
            return Path(self.uri(key)).exists()
        response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key), MaxKeys=1)
        return bool(response.get("KeyCount"))

    def check_writable(self) -> str:
        """Write, read back and delete a small object; returns where (raises on failure)."""
        key = "_lakehouse_write_check"
        if not self.remote:
            path = Path(self.uri(key))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("ok")
            path.unlink()
            return str(path.parent)
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=b"ok")
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return self.storage.root

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("s3", **self.storage.s3.boto3_kwargs())
        return self._client

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key
