"""Shared fixtures. Real services run on 127.0.0.1 and are started once per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """A real S3 API (moto's ``ThreadedMotoServer``) on 127.0.0.1, on a free port, for the whole session.

    moto's in-process ``mock_aws`` does not intercept s3fs (aiobotocore), hence a server. Yields a dict:

    - ``endpoint_url``: ``"http://127.0.0.1:<port>"``
    - ``storage_options``: fsspec/s3fs options for that endpoint, without credentials: like a user's, the dummy
      ``testing`` credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, set for the
      session and its subprocesses; run options refuse credentials in storage options)
    - ``make_bucket(name=None) -> str``: creates a bucket (a fresh unique name if none; names need 3+ characters)
      and returns its URL ``"s3://<name>"``.
    - ``client``: a boto3 S3 client for that endpoint (to act as "another process" behind s3fs's caches).

    The server keeps its state for the session: give each test its own bucket.
    """
    import boto3
    from moto import server as server_mod

    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    saved = {name: os.environ.get(name) for name in credentials}
    os.environ.update(credentials)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    region = "us-east-1"
    client = boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name=region,
    )

    def make_bucket(name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:20]}"
        if len(name) < 3:
            raise ValueError(f"S3 bucket names need 3 or more characters, got {name!r}")
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    try:
        yield {
            "endpoint_url": endpoint_url,
            "storage_options": {
                "endpoint_url": endpoint_url,
                "client_kwargs": {"region_name": region},
            },
            "make_bucket": make_bucket,
            "client": client,
        }
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """``prefect server start`` on 127.0.0.1 for the whole session (see
    :func:`tests.deployments.conftest.running_prefect_server`); started only when a test asks for it."""
    from tests.deployments.conftest import running_prefect_server

    with running_prefect_server(tmp_path_factory) as server:
        yield server
