"""The artifacts a labelling run leaves in the Prefect UI, read back through the REST API: stable keys per flow
(summary, progress, failures), and a summary table with proper columns."""

import json

import httpx
from prefect.settings import PREFECT_API_URL

from dinoseg_core.io import storage
from flows.engine import artifact_key
from flows.labelling import label_collection
from tests.pipeline_data import TINY, artifacts_of, write_collection


def _table(artifact: dict) -> list[dict]:
    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


def test_artifact_keys_follow_prefects_rules():
    assert artifact_key("summary", "label-collection") == "dinoseg-label-collection-summary"
    assert artifact_key("failures", "Label With_Text!") == "dinoseg-label-with-text-failures"


def test_a_run_leaves_keyed_summary_progress_and_failures_artifacts(tmp_path):
    root = str(tmp_path / "bucket")
    write_collection(root, tiles=2)
    storage.write_bytes(f"{root}/tiles/tile_zz_truncated.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    state = label_collection(references=f"{root}/refs.yaml", images=f"{root}/tiles/*.png",
                             archive=str(tmp_path / "a.zarr"), backbone=TINY,
                             run={"device": "cpu", "cache": str(tmp_path / "cache")}, return_state=True)
    assert state.is_failed()
    by_key = {a["key"]: a for a in artifacts_of(state)}
    prefix = "dinoseg-label-collection-"
    assert {prefix + kind for kind in ("summary", "progress", "failures")} <= set(by_key)
    summary = _table(by_key[prefix + "summary"])
    assert set(summary[0]) == {"metric", "value"}
    values = {row["metric"]: row["value"] for row in summary}
    assert values["images labelled"] == 2 and values["images failed"] == 1
    assert "seconds per labelled image" in values
    failures = _table(by_key[prefix + "failures"])
    assert failures[0]["uri"].endswith("tile_zz_truncated.png") and failures[0]["reason"]
    # the UI's Artifacts page: the latest artifact of each key
    latest = httpx.get(f"{PREFECT_API_URL.value()}/artifacts/{prefix}summary/latest")
    latest.raise_for_status()
    assert latest.json()["flow_run_id"] == str(state.state_details.flow_run_id)
