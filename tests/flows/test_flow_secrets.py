"""Flows with a plain ``storage_options`` parameter refuse credentials in it (the Prefect server stores parameters
in clear) before they read anything, and never echo the value."""

import pytest

from dinoseg_core.errors import InputError
from flows.maintenance import vacuum_archive
from flows.text import evaluate_ovss, train_ovss

CREDENTIALS = {"endpoint_url": "http://127.0.0.1:9", "client_kwargs": {"aws_secret_access_key": "hunter2"}}


def test_vacuum_refuses_credentials_in_its_storage_options(tmp_path):
    with pytest.raises(InputError, match="storage_options.secret.*not taken as flow parameters"):
        vacuum_archive.fn(str(tmp_path / "a.zarr"), 24.0, {"endpoint_url": "http://127.0.0.1:9", "secret": "s"})
    assert not (tmp_path / "a.zarr").exists()


@pytest.mark.parametrize("flow", ["train_ovss", "evaluate_ovss"])
def test_ovss_flows_refuse_credentials_before_reading(flow, tmp_path):
    given = dict(dataset=str(tmp_path / "missing"), dinotxt=str(tmp_path / "missing.pth"), storage_options=CREDENTIALS)
    if flow == "train_ovss":
        given.update(checkpoint=str(tmp_path / "head.safetensors"), steps=1)
    with pytest.raises(InputError, match=r"client_kwargs\.aws_secret_access_key: credentials") as caught:
        {"train_ovss": train_ovss, "evaluate_ovss": evaluate_ovss}[flow].fn(**given)
    assert "hunter2" not in str(caught.value)
    assert not (tmp_path / "head.safetensors").exists()
