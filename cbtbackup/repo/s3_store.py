"""A store in an S3 bucket (AWS or any S3-compatible service), on boto3.

Keys live under a prefix: ``s3://bucket/backups/vm1`` keeps the repository's ``config`` at
``backups/vm1/config``. Credentials, region and profile come from boto3's standard chain; an endpoint URL
points at MinIO, Ceph RGW or a test server. botocore retries throttling, 5xx answers and connection errors
in its ``standard`` mode; objects over the multipart threshold go up in parts. Errors are translated here
into :mod:`cbtbackup.errors`, and no message ever carries a credential.

boto3 is imported when the first S3 store is made, so commands that never touch S3 start fast.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import io
import re
import time
from collections.abc import Iterator
from typing import Any

from cbtbackup.errors import (
    BucketMissingError,
    NotFoundError,
    RetainedError,
    StorageError,
    TransientStorageError,
    UsageError,
)
from cbtbackup.model.durations import format_when
from cbtbackup.repo.retention import RetentionPolicy
from cbtbackup.repo.s3_point_in_time import PointInTime
from cbtbackup.repo.store import ListPage, ObjectInfo, Store, StoreCapabilities

MULTIPART_THRESHOLD = 64 << 20
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AllAccessDisabled", "AccountProblem"}
_TRANSIENT = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "Throttling",
              "ThrottlingException", "RequestTimeout", "RequestLimitExceeded"}


@dataclasses.dataclass(frozen=True)
class S3Options:
    """How to reach S3; everything else comes from boto3's configuration chain."""

    endpoint_url: str | None = None
    parallelism: int = 16
    max_attempts: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # per try; after max_attempts tries without an answer the call fails
    storage_class: str | None = None  # for chunk objects only; None: the bucket's default (STANDARD)
    allow_archive_class: bool = False  # classes that need a restore request before a read
    as_of: float | None = None  # read the bucket as it was then (a versioned bucket), and write nothing


# Objects in these classes cannot be read until a restore request has run for hours: a backup stored there
# cannot be restored, verified or pruned in the ordinary way.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
CHUNKS_PREFIX = "chunks/"  # the only objects that take a storage class; manifests, heads, keys, locks stay


class _Denied(StorageError):
    """The server refused a request (credentials, a bucket policy, or a locked version)."""


class _NoLockConfig(StorageError):
    """The bucket has no Object Lock configuration."""


def _utc(when: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(when, datetime.UTC)


class ObjectExistsError(StorageError):
    """A conditional put found an object at its key (only ``put_if_absent`` sees it)."""


# S3's bucket naming rules (AWS, and what RGW and MinIO enforce by default): 3 to 63 characters, lowercase
# letters, digits, dots and hyphens, a letter or digit at each end, not an IP address.
_BUCKET_RULES = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
# What no S3 server accepts at all: botocore's own check is this lenient (old buckets may hold capitals).
_BUCKET_CHARACTERS = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
BUCKET_RULES_TEXT = "3 to 63 lowercase letters, digits, '.' and '-', a letter or digit at each end"


def bucket_name_valid(bucket: str) -> bool:
    return bool(_BUCKET_RULES.match(bucket)) and not _IP_ADDRESS.match(bucket) and ".." not in bucket


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix/")."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"{url!r} names no bucket (expected s3://BUCKET/PREFIX)")
    if not _BUCKET_CHARACTERS.match(bucket):
        raise UsageError(f"invalid bucket name {bucket!r}: S3 bucket names are {BUCKET_RULES_TEXT}")
    prefix = prefix.strip("/")
    return bucket, prefix + "/" if prefix else ""


class S3Store(Store):
    def __init__(self, url: str, options: S3Options | None = None) -> None:
        import boto3
        import botocore.config

        self.url = url
        self.options = options or S3Options()
        self.bucket, self.prefix = parse_s3_url(url)
        storage_class = self.options.storage_class
        if storage_class is not None:
            if not storage_class or not storage_class.replace("_", "").isalnum():
                raise UsageError(f"invalid storage class {storage_class!r}")
            if storage_class.upper() in ARCHIVE_CLASSES and not self.options.allow_archive_class:
                raise UsageError(f"storage class {storage_class} needs a restore request before each read: "
                                 "backups there cannot be restored or verified directly (--allow-archive-class "
                                 "if that is what you want)")
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": self.options.max_attempts},
            max_pool_connections=self.options.parallelism,
            connect_timeout=self.options.connect_timeout,
            read_timeout=self.options.read_timeout,
        )
        try:
            self._client = boto3.session.Session().client("s3", endpoint_url=self.options.endpoint_url,
                                                          config=config)
        except Exception as e:  # a malformed endpoint URL or region
            raise UsageError(f"cannot set up S3 for {url}: {e}") from None
        self._retention: RetentionPolicy | None = None
        self._past = PointInTime(self, self.options.as_of) if self.options.as_of is not None else None

    # -- the Store interface -------------------------------------------------------------------------------

    def _extra(self, key: str) -> dict[str, Any]:
        """What a PUT of ``key`` carries besides its body: the bucket owner's full control, the storage class
        (chunks), the retention (in an Object Lock repository, everything but locks and probes)."""
        if self._past is not None:
            raise UsageError(self._past.read_only)
        # An object belongs to whoever wrote it on RGW (and on AWS buckets that still use ACLs): without this
        # grant the bucket owner's maintenance machine could not read, forget or prune what a host's own key
        # wrote. AWS's default (ACLs disabled, bucket owner enforced) accepts exactly this canned ACL.
        extra: dict[str, Any] = {"ACL": "bucket-owner-full-control"}
        if self.options.storage_class and key.startswith(CHUNKS_PREFIX):
            extra["StorageClass"] = self.options.storage_class
        if self._retention is not None and self._retention.locks(key):
            extra["ObjectLockMode"] = self._retention.mode
            extra["ObjectLockRetainUntilDate"] = _utc(time.time() + self._retention.seconds)
        return extra

    def put(self, key: str, data: bytes) -> None:
        if len(data) > MULTIPART_THRESHOLD:
            from boto3.s3.transfer import TransferConfig

            cfg = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD,
                                 max_concurrency=4)
            self._call("write", key, self._client.upload_fileobj, io.BytesIO(data), self.bucket,
                       self.prefix + key, Config=cfg, ExtraArgs=self._extra(key) or None)
        else:
            self._call("write", key, self._client.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=data,
                       **self._extra(key))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """A conditional PUT (``If-None-Match: *``): S3 creates the object only if none is there."""
        try:
            self._call("write", key, self._client.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=data,
                       IfNoneMatch="*", **self._extra(key))
        except ObjectExistsError:
            return False
        return True

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key}
        if self._past is not None:
            kwargs["VersionId"] = self._past.version_of(key)
        if offset or length is not None:
            if length == 0:
                return b""
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        response = self._call("read", key, self._client.get_object, **kwargs)
        body = response["Body"]
        try:
            data: bytes = self._call("read", key, body.read)
        finally:
            body.close()
        if "ContentLength" in response and len(data) != response["ContentLength"]:
            raise TransientStorageError(f"read of {self._where(key)} ended early")
        return data

    def stat(self, key: str) -> ObjectInfo | None:
        if self._past is not None:
            return self._past.stat(key)
        try:
            head = self._call("stat", key, self._client.head_object, Bucket=self.bucket, Key=self.prefix + key)
        except NotFoundError:
            return None
        modified = head.get("LastModified")
        return ObjectInfo(key, int(head["ContentLength"]), str(head.get("ETag", "")),
                          modified.timestamp() if modified is not None else 0.0)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if self._past is not None:
            return iter(self._past.list(prefix))
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        found: list[ObjectInfo] = []
        iterator = iter(pages)
        while True:
            page = self._call("list", prefix, next, iterator, None)
            if page is None:
                break
            found.extend(self._listed(item) for item in page.get("Contents", []))
        return iter(sorted(found, key=lambda o: o.key))

    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> ListPage:
        """One ListObjectsV2 request (S3 answers at most 1000 keys a request, in UTF-8 binary order, which
        for the ASCII keys of a repository is the order of Python strings)."""
        if self._past is not None:
            after = [info for info in self._past.list(prefix) if info.key > start_after]
            return after[:limit], len(after) > limit
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix,
                                  "MaxKeys": max(1, min(limit, 1000))}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        answer = self._call("list", prefix, self._client.list_objects_v2, **kwargs)
        return [self._listed(item) for item in answer.get("Contents", [])], bool(answer.get("IsTruncated"))

    def _listed(self, item: dict[str, Any]) -> ObjectInfo:
        """An object of a ListObjectsV2 answer, its key without the repository's prefix."""
        modified = item.get("LastModified")
        return ObjectInfo(item["Key"][len(self.prefix):], int(item["Size"]), str(item.get("ETag", "")),
                          modified.timestamp() if modified is not None else 0.0)

    def delete(self, key: str) -> None:
        if self._past is not None:
            raise UsageError(self._past.read_only)
        if self._retention is None:
            self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=self.prefix + key)
            return
        # A versioned bucket: a plain DELETE only hides the object behind a marker and frees nothing. Remove
        # every version instead; a locked one refuses, and stays.
        kept = 0.0
        for version in self.versions(key):
            try:
                self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=self.prefix + key,
                           VersionId=version)
            except _Denied:
                kept = max(kept, self._retained(key, version) or time.time())
        if kept:
            raise RetainedError(f"{self._where(key)} is locked until {format_when(kept)}", until=kept)

    def versions(self, key: str) -> builtins.list[str]:
        """Every version id of ``key`` (delete markers too), newest first."""
        answer = self._call("list", key, self._client.list_object_versions, Bucket=self.bucket,
                            Prefix=self.prefix + key)
        found = [(v["LastModified"], v["VersionId"]) for kind in ("Versions", "DeleteMarkers")
                 for v in answer.get(kind, []) if v["Key"] == self.prefix + key]
        return [version for _, version in sorted(found, key=lambda f: f[0], reverse=True)]

    # -- Object Lock ------------------------------------------------------------------------------------------

    def object_lock_refusal(self) -> str | None:
        try:
            answer = self._call("read", "", self._client.get_object_lock_configuration, Bucket=self.bucket)
        except _NoLockConfig:
            return (f"bucket {self.bucket!r} does not have Object Lock enabled (S3 turns it on only when a bucket "
                    "is created: make a new bucket with Object Lock)")
        config = answer.get("ObjectLockConfiguration", {})
        if config.get("ObjectLockEnabled") != "Enabled":
            return f"bucket {self.bucket!r} does not have Object Lock enabled"
        if config.get("Rule"):
            return (f"bucket {self.bucket!r} has a default retention rule: it would lock cbtbackup's lock files "
                    "too; remove the rule (cbtbackup sets retention on each object itself)")
        return None

    def apply_object_lock(self, policy: RetentionPolicy) -> None:
        self._retention = policy

    def retained_until(self, key: str) -> float:
        return self._retained(key, None)

    def _retained(self, key: str, version: str | None) -> float:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key}
        if version:
            kwargs["VersionId"] = version
        try:
            answer = self._call("read", key, self._client.get_object_retention, **kwargs)
        except (NotFoundError, _NoLockConfig):
            return 0.0
        until = answer.get("Retention", {}).get("RetainUntilDate")
        return until.timestamp() if until is not None and until.timestamp() > time.time() else 0.0

    def extend_retention(self, key: str, until: float) -> None:
        if self._retention is None:
            raise UsageError("this repository does not lock its objects")
        self._call("write", key, self._client.put_object_retention, Bucket=self.bucket, Key=self.prefix + key,
                   Retention={"Mode": self._retention.mode, "RetainUntilDate": _utc(until)})

    def sync(self) -> None:
        """Nothing to do: S3 acknowledges a PUT once the object is durable."""

    def remove_incomplete(self, older_than: float) -> int:
        """Abort multipart uploads a killed put left (they cost storage until aborted)."""
        answer = self._call("list", "", self._client.list_multipart_uploads, Bucket=self.bucket, Prefix=self.prefix)
        removed = 0
        for upload in answer.get("Uploads", []):
            if upload["Initiated"].timestamp() < older_than:
                self._call("delete", upload["Key"], self._client.abort_multipart_upload, Bucket=self.bucket,
                           Key=upload["Key"], UploadId=upload["UploadId"])
                removed += 1
        return removed

    def capabilities(self) -> StoreCapabilities:
        where = f" at {self.options.endpoint_url}" if self.options.endpoint_url else ""
        return StoreCapabilities(parallelism=self.options.parallelism, description=f"{self.url}{where}",
                                 remote=True)

    def close(self) -> None:
        self._client.close()

    # -- error translation ---------------------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _call(self, action: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import botocore.exceptions as bx

        try:
            return fn(*args, **kwargs)
        except bx.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code == "ObjectLockConfigurationNotFoundError" or code == "NoSuchObjectLockConfiguration":
                raise _NoLockConfig(f"bucket {self.bucket!r} has no Object Lock configuration") from None
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == "412":
                raise ObjectExistsError(f"{self._where(key)} exists") from None
            # AWS says InvalidStorageClass; RGW says InvalidArgument for a class its zone does not define.
            if code == "InvalidStorageClass" or (code == "InvalidArgument" and action == "write"
                                                 and self.options.storage_class and key.startswith(CHUNKS_PREFIX)):
                raise UsageError(f"the server does not offer storage class {self.options.storage_class!r}") from None
            if code == "InvalidBucketName" or (code in _NO_BUCKET | _NOT_FOUND and not bucket_name_valid(self.bucket)):
                raise UsageError(f"invalid bucket name {self.bucket!r}: S3 bucket names are {BUCKET_RULES_TEXT}") \
                    from None
            if code in _NO_BUCKET:
                raise BucketMissingError(f"bucket {self.bucket!r} does not exist") from None
            if code in ("", "404") and status == "404" and getattr(fn, "__name__", "") != "head_object":
                # An S3 server names what is missing (NoSuchKey, NoSuchBucket) in an XML body; only a HEAD
                # answer has no body. A bare 404 to anything else is a web server, not S3.
                raise StorageError(f"{self.options.endpoint_url or 'the endpoint'} answered {action} of "
                                   f"{self._where(key)} with a plain 404, not an S3 error: it does not look like an "
                                   "S3 server (check --endpoint-url)") from None
            if code in _NOT_FOUND or status == "404":
                raise NotFoundError(f"{self._where(key)}: no such object") from None
            if code == "RequestTimeTooSkewed":
                raise StorageError("this host's clock is too far off the S3 server's (RequestTimeTooSkewed): set "
                                   "the time right (NTP) and try again") from None
            if code in _DENIED or status == "403":
                raise _Denied(
                    f"access denied to {self._where(key)} ({code or status}): check the credentials and the "
                    "bucket policy"
                ) from None
            if code in _TRANSIENT or status.startswith("5"):
                raise TransientStorageError(f"{action} of {self._where(key)} failed: {code or status}") from None
            raise StorageError(f"{action} of {self._where(key)} failed: {code or status}") from None
        except bx.NoCredentialsError:
            raise StorageError("no AWS credentials found (environment, ~/.aws or instance profile)") from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError) as e:
            # botocore has already retried the connection: trying more only makes the user wait.
            raise StorageError(f"cannot reach the S3 endpoint: {e}") from None
        except bx.ReadTimeoutError:
            # botocore has already tried max_attempts times: a server that says nothing for that long is down
            # or wedged, and more tries would only hold a timer's job for minutes.
            raise StorageError(
                f"the S3 endpoint did not answer {action} of {self._where(key)} within "
                f"{self.options.read_timeout:g} s ({self.options.max_attempts} tries): is the server up? "
                "(--s3-timeout or CBTBACKUP_S3_TIMEOUT sets the wait)") from None
        except (bx.ResponseStreamingError, bx.IncompleteReadError, bx.ConnectionClosedError) as e:
            raise TransientStorageError(f"{action} of {self._where(key)} was cut off: {e}") from None
        except bx.BotoCoreError as e:
            raise StorageError(f"{action} of {self._where(key)} failed: {e}") from None
        except (ConnectionError, TimeoutError) as e:
            raise TransientStorageError(f"{action} of {self._where(key)} was cut off: {e}") from None
