"""The cluster's object store: blobs, image layers and volume content shared by every
node and every control-plane replica, in any S3-compatible server (boto3).

Configured the usual AWS way: `s3://bucket/prefix` names where, and the endpoint and
credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION), which boto3 reads itself.

Everything stored here is immutable under its key (content-addressed or write-once), so
each machine keeps a local copy (`LocalCopies`) and fetches a key at most once.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import boto3  # type: ignore[import-untyped]
import botocore.config  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]


class ObjectStoreError(Exception):
    """The object store cannot be used as configured; the message says what to fix."""


class ObjectStore:
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ObjectStoreError(f"--blob-url must look like s3://bucket/prefix, not {url!r}")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        os.environ.setdefault("AWS_REGION", "us-east-1")  # S3-compatible servers accept any
        self._client = boto3.client(
            "s3",
            config=botocore.config.Config(
                retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        """Fail early, naming the bucket and endpoint, if the store cannot be reached."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                self._client.create_bucket(Bucket=self.bucket)
                return
            raise ObjectStoreError(f"object store bucket {self.bucket!r}: {error}") from error
        except botocore.exceptions.BotoCoreError as error:
            endpoint = os.environ.get("AWS_ENDPOINT_URL", "(AWS default)")
            raise ObjectStoreError(
                f"cannot reach the object store at {endpoint} for {self.url}: {error}; "
                "set AWS_ENDPOINT_URL and the AWS_* credentials"
            ) from error

    def upload(self, key: str, path: Path) -> None:
        self._client.upload_file(str(path), self.bucket, self._key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code", "") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def download(self, key: str, path: Path) -> bool:
        """Fetch `key` into `path` (atomically); False if there is no such object."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".fetch-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            self._client.download_file(self.bucket, self._key(key), str(temporary))
        except botocore.exceptions.ClientError as error:
            temporary.unlink(missing_ok=True)
            if error.response.get("Error", {}).get("Code", "") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        os.replace(temporary, path)
        return True

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))


class LocalCopies:
    """A machine's copies of immutable objects: `fetch(key, path)` downloads once, even
    when many containers ask for the same key at the same moment."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def fetch(self, key: str, path: Path) -> bool:
        if path.exists():
            return True
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if path.exists():
                return True
            return self.store.download(key, path)
