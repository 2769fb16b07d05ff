"""Credentials never become flow parameters: storage options with credentials are refused, by the run options and
by the command before anything runs (the Secret block that supplies them instead: tests/flows/test_secrets.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.dinoseg.subprocess_cli import dinoseg
from tests.pipeline_data import TINY, write_collection

SECRET = "S3CR3T-" + uuid.uuid4().hex  # a value that can only come from this test


def label_args(root: str, archive: str, *extra: str) -> list[str]:
    return ["label", "--references", f"{root}/refs.yaml", "--images", f"{root}/tiles/", "--archive", archive,
            "--backbone", TINY, "--device", "cpu", "--workers", "1", *extra]


CREDENTIALS = [
    ({"key": "AKIA-ID", "secret": SECRET}, "storage_options.key, storage_options.secret"),
    ({"client_kwargs": {"aws_secret_access_key": SECRET}}, "storage_options.client_kwargs.aws_secret_access_key"),
    ({"Session_Token": SECRET}, "storage_options.Session_Token"),
    ({"token": SECRET}, "storage_options.token"),
    ({"config_kwargs": [{"password": SECRET}]}, "storage_options.config_kwargs[0].password"),
    ({"account_key": SECRET}, "storage_options.account_key"),
    ({"credentials": {"type": "service_account", "private_key": SECRET}}, "storage_options.credentials"),
    ({"endpoint_url": f"https://user:{SECRET}@minio.example"}, "storage_options.endpoint_url (a URL with a password)"),
]


@pytest.mark.parametrize("options, named", CREDENTIALS)
def test_credentials_in_storage_options_are_refused_naming_where_they_go(options, named):
    from pydantic import ValidationError

    from dinoseg.cli.options import validated
    from dinoseg_core.errors import InputError
    from tasks.options import RunOptions

    with pytest.raises(ValidationError) as err:  # a flow's `run` parameter, a deployment's
        RunOptions(storage_options=options)
    with pytest.raises(InputError) as cli_err:  # the command line's --storage-options
        validated(RunOptions, {"storage_options": options})
    for message in (str(err.value), str(cli_err.value)):
        assert named in message and "credentials are not taken as run options" in message
        for where in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS", '"profile"',
                      "--secret-storage-options"):
            assert where in message
        assert SECRET not in message


def test_the_command_refuses_credentials_before_any_server_and_writes_nothing(tmp_path):
    write_collection(str(tmp_path), tiles=1, size=64, concepts=("roof",))
    archive = tmp_path / "a.zarr"
    options = json.dumps({"client_kwargs": {"aws_secret_access_key": SECRET}})
    code, err, imported = dinoseg(*label_args(str(tmp_path), str(archive), "--storage-options", options))
    assert code == 2 and len(err) == 1, err
    assert "storage_options.client_kwargs.aws_secret_access_key" in err[0] and SECRET not in err[0]
    assert imported == [] and not archive.exists()  # no server, no flow run, nothing written


def test_settings_that_are_not_credentials_pass(tmp_path):
    from tasks.options import RunOptions

    assert RunOptions(storage_options={"token": "anon"}).storage_options == {"token": "anon"}  # gcsfs, public data
    options = {"endpoint_url": "http://127.0.0.1:9000", "profile": "dev", "anon": False,
               "client_kwargs": {"region_name": "eu-1"},
               "s3_additional_kwargs": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:eu-1:1:key/x"}}
    assert RunOptions(storage_options=options).storage_options == options
