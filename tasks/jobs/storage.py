"""Object storage on any S3 API (AWS, MinIO, R2, SeaweedFS, rclone) through boto3.

Keys derive from the job id (``generated/<job_id>/<i>.<format>``), so a re-run
overwrites, never duplicates; the extension and the stored Content-Type both follow
the job's ``output_format``. URLs are presigned GETs with an expiry, or
``<public_base_url>/<key>`` when the operator serves the bucket publicly.

The fleet reads and writes through ``s3_endpoint_url`` (an internal address); URLs
given to clients are presigned for ``s3_public_endpoint_url`` when set, the address at
which the same S3 answers them. Presigning makes no request, and a SigV4 signature
covers the host, so a URL signed for one address is good only at that address.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config.errors import InvalidInput, NotFound, StorageUnavailable
from config.settings import Settings
from config.tls import s3_verify
from tasks.jobs.records import JOB_ID_RULE, valid_job_id

log = logging.getLogger("kiln.storage")


# Output formats (OpenAI's ``output_format`` names) → Content-Type; the key's extension
# is the format's name.
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def image_key(job_id: str, index: int, fmt: str = "png") -> str:
    """``generated/<job_id>/<index>.<fmt>``; a job id outside the safe alphabet never
    makes a key (it could leave the prefix)."""
    if not valid_job_id(job_id) or not isinstance(index, int) or index < 0:
        raise InvalidInput(
            f"job_id must be {JOB_ID_RULE}", fields={"job_id": [f"must be {JOB_ID_RULE}"]}
        )
    if fmt not in CONTENT_TYPES:
        raise InvalidInput(
            f"output_format must be one of {sorted(CONTENT_TYPES)}",
            fields={"output_format": [fmt]},
        )
    return f"generated/{job_id}/{index}.{fmt}"


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.public_base_url = settings.public_base_url.rstrip("/")
        self.expiry_s = settings.url_expiry_s
        self.client: Any = _client(settings, settings.s3_endpoint_url)
        public = settings.s3_public_endpoint_url
        self.signer: Any = _client(settings, public) if public else self.client

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
                raise _transient("check bucket", exc) from exc
            self.client.create_bucket(Bucket=self.bucket)
            log.info("created bucket %s", self.bucket)
        except BotoCoreError as exc:
            raise _transient("check bucket", exc) from exc

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "image/png",
        metadata: dict | None = None,
    ) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=metadata or {},
            )
        except (BotoCoreError, ClientError) as exc:
            raise _transient(f"upload {key}", exc) from exc

    def read(self, key: str) -> bytes:
        """The object's bytes; ``NotFound`` (permanent) when there is no such key."""
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                raise NotFound(f"no object {key}", fields={"key": [key]}) from None
            raise _transient(f"read {key}", exc) from exc
        except BotoCoreError as exc:
            raise _transient(f"read {key}", exc) from exc

    def url(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{key}"
        return str(
            self.signer.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.expiry_s
            )
        )

    def ping(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except (BotoCoreError, ClientError):
            return False


def _client(settings: Settings, endpoint_url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        aws_access_key_id=settings.s3_access_key or None,
        aws_secret_access_key=settings.s3_secret_key or None,
        region_name=settings.s3_region,
        verify=s3_verify(settings),
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            # Over https:// boto3 otherwise streams uploads aws-chunked with a trailing
            # checksum, which S3 servers other than AWS's refuse (rclone's:
            # MissingContentLength); a Content-Length and MD5-checked ETags suffice.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _transient(what: str, exc: Exception) -> StorageUnavailable:
    # The message names the operation and the error class, never credentials.
    return StorageUnavailable(f"object storage failed to {what}: {type(exc).__name__}")
