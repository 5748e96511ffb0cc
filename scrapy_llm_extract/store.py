"""An S3-compatible object store for the spool, through ``botocore``.

Why objects and not files: machines that run crawls (scrapyd, Kubernetes,
hosted Scrapy) rarely share a POSIX folder with working ``flock``, but they
share object storage. An object is only ever written whole (one PUT), so a
reader never sees a partial one; the only mutable objects (manifests, leases)
are replaced with conditional writes: ``If-None-Match: *`` to create,
``If-Match: <etag>`` to replace or delete, a 412 (:class:`PreconditionFailed`)
when someone else got there first.

Built from the settings Scrapy's own S3 feed storage reads (``AWS_*``, see
:class:`~.config.S3Settings`); ``botocore`` is the optional ``s3`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .config import S3Settings

SCHEME = "s3://"


def is_store_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists (create) or changed (replace)."""


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    etag: str
    #: The server's clock: when the object was last written, and when it answered.
    last_modified: datetime
    server_time: datetime


class S3Store:
    """The objects under ``s3://bucket/prefix/``; keys given to methods are relative to it."""

    def __init__(self, uri: str, settings: S3Settings) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"Not an s3://bucket/prefix URI: {uri!r}")
        self.uri = uri.rstrip("/")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
        try:
            import botocore.session
            from botocore.config import Config as BotoConfig
        except ImportError:
            raise ImportError(
                f"LLM_EXTRACT_SPOOL_DIR = {uri!r} needs botocore:"
                " pip install 'scrapy-llm-extract[s3]'"
            ) from None
        session = botocore.session.get_session()
        self._client = session.create_client(
            "s3",
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            endpoint_url=settings.endpoint_url,
            region_name=settings.region_name,
            use_ssl=settings.use_ssl,
            verify=settings.verify,
            config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}),
        )
        self._errors = self._client.exceptions

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    def put(
        self, key: str, body: bytes | BinaryIO, *, if_none_match: bool = False, if_match: str = ""
    ) -> str:
        """Write ``body`` (bytes, or a file read from its start) whole; return its etag.
        Conditional when asked (see module doc)."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key, "Body": body}
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match:
            args["IfMatch"] = if_match
        try:
            response = self._client.put_object(**args)
        except self._errors.ClientError as exc:
            if _status(exc) in (409, 412):  # 409: a concurrent conditional write on AWS
                raise PreconditionFailed(key) from exc
            raise
        return str(response["ETag"])

    def get(self, key: str) -> StoredObject | None:
        """The object, or None when there is none."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self._errors.NoSuchKey:
            return None
        except self._errors.ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        with response["Body"] as stream:
            body = stream.read()
        date = response["ResponseMetadata"]["HTTPHeaders"].get("date")
        last_modified = response["LastModified"]
        return StoredObject(
            body=body,
            etag=str(response["ETag"]),
            last_modified=last_modified,
            server_time=parsedate_to_datetime(date) if date else last_modified,
        )

    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, sorted."""
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", ()))
        return sorted(keys)

    def delete(self, key: str, *, if_match: str = "") -> None:
        """Delete the object; with ``if_match``, only while its etag is that one (else
        :class:`PreconditionFailed`). A missing object is deleted already."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key}
        if if_match:
            args["IfMatch"] = if_match
        try:
            self._client.delete_object(**args)
        except self._errors.ClientError as exc:
            status = _status(exc)
            if status == 404:
                return
            if status in (409, 412):
                raise PreconditionFailed(key) from exc
            raise

    def close(self) -> None:
        self._client.close()


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
