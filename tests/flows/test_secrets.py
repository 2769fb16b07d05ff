"""``secret_storage_options``: a Prefect Secret block's credentials merged in where storage is read, under a real
Prefect server; the flow run's parameters, state and logs on the server hold the block's name, never its value."""

from __future__ import annotations

import json
import uuid

import pytest

from dinoseg_core.errors import InputError
from tasks.options import RunOptions, resolved_storage_options
from tests.pipeline_data import TINY, write_collection

SECRET = "S3CR3T-" + uuid.uuid4().hex


def _block(value) -> str:
    from prefect.blocks.system import Secret

    name = f"creds-{uuid.uuid4().hex[:10]}"
    Secret(value=value).save(name)
    return name


def test_a_secret_block_is_merged_over_the_storage_options():
    name = _block({"key": "AKIA-ID", "secret": SECRET, "client_kwargs": {"aws_session_token": SECRET}})
    run = RunOptions(storage_options={"endpoint_url": "http://s3.example", "client_kwargs": {"region_name": "eu-1"}},
                     secret_storage_options=name)
    assert resolved_storage_options(run) == {
        "endpoint_url": "http://s3.example", "key": "AKIA-ID", "secret": SECRET,
        "client_kwargs": {"region_name": "eu-1", "aws_session_token": SECRET}}
    assert SECRET not in run.model_dump_json()  # the run options themselves (the flow's parameter) hold the name
    assert resolved_storage_options(RunOptions(storage_options={"anon": True})) == {"anon": True}


def test_a_missing_or_malformed_block_is_named_and_its_value_never_shown():
    with pytest.raises(InputError, match="'no-such-block': no Prefect Secret block of that name"):
        resolved_storage_options(RunOptions(secret_storage_options="no-such-block"))
    for value in (f"not json {SECRET}", [SECRET]):
        name = _block(value)
        with pytest.raises(InputError, match="must hold a JSON object") as err:
            resolved_storage_options(RunOptions(secret_storage_options=name))
        assert name in str(err.value) and SECRET not in str(err.value)


@pytest.mark.integration
def test_a_run_with_a_secret_block_keeps_its_value_off_the_server(s3_server, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.labelling import label_collection

    bucket = s3_server["make_bucket"]()
    so = s3_server["storage_options"]  # no credentials: the block brings them
    write_collection(f"{bucket}/lake", tiles=2, size=64, storage_options=so, concepts=("roof",))
    name = _block({"key": "testing", "secret": SECRET})
    state = label_collection(references=f"{bucket}/lake/refs.yaml", images=f"{bucket}/lake/tiles/",
                             archive=f"{bucket}/masks.zarr", backbone=TINY, return_state=True,
                             run={"device": "cpu", "cache": str(tmp_path / "cache"), "storage_options": so,
                                  "secret_storage_options": name})
    assert state.is_completed(), state.message
    assert state.result()["labelled"] == 2

    with get_client(sync_client=True) as client:  # what the server holds, through its REST API
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        logs = client.read_logs()
    assert flow_run.parameters["run"]["secret_storage_options"] == name
    held = json.dumps([flow_run.parameters, flow_run.state.message] + [log.message for log in logs], default=str)
    assert SECRET not in held
