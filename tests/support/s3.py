"""The S3 API server of the tests (moto_server, standing in for MinIO) and its buckets."""
from __future__ import annotations

from dataclasses import dataclass

BUCKET = "rakuten-models"
DATASETS_BUCKET = "rakuten-datasets"
REGION = "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass
class S3:
    url: str
    env: dict[str, str]

    @classmethod
    def at(cls, url: str) -> S3:
        return cls(url, {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": KEYS["aws_access_key_id"],
                         "AWS_SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"], "AWS_DEFAULT_REGION": REGION})

    def client(self):
        """A boto3 S3 client of this server, whatever this process's environment says."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, **KEYS)
