"""Every deployment in prefect.yaml and deployments/*.yaml, and every parameter set in deployments/params/, is valid
for its flow: the entrypoint loads, the parameters pass the flow's own validation, schedules are cron in UTC, the
pull step moves into the checkout. (tests/deployments/test_prefect_yaml.py deploys and runs them for real.)"""

from __future__ import annotations

import json

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from dinoseg_core.io.manifest import load_manifest
from tests.deployments.conftest import REPO

PREFECT_FILES = [REPO / "prefect.yaml", *sorted((REPO / "deployments").glob("*.yaml"))]
#: Stand-ins for the parameters a run by hand supplies (--param), so that partial parameter sets validate.
REQUIRED = {
    "label-collection": {"references": "refs.yaml", "images": "tiles/*.png", "archive": "masks.zarr"},
    "segment-images": {"references": "refs.yaml", "images": ["tile.png"], "archive": "masks.zarr"},
    "vacuum-archive": {"archive": "masks.zarr"},
}


def deployments() -> list:
    cases = []
    for path in PREFECT_FILES:
        spec = yaml.safe_load(path.read_text())
        cases += [pytest.param(spec, d, id=f"{path.name}:{d['name']}") for d in spec["deployments"]]
    return cases


@pytest.mark.parametrize("spec, deployment", deployments())
def test_deployment_is_valid_for_its_flow(spec, deployment):
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert deployment["entrypoint"].startswith("flows/")
    flow.validate_parameters({**REQUIRED[flow.name], **deployment.get("parameters", {})})
    assert deployment["work_pool"]["name"].startswith("dinoseg")
    for schedule in deployment.get("schedules", []):
        assert schedule["timezone"] == "UTC" and len(schedule["cron"].split()) == 5
    assert spec["build"] is None and spec["push"] is None
    [step] = spec["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $DINOSEG_CHECKOUT }}"
    assert "DINOSEG_CHECKOUT" in deployment["work_pool"]["job_variables"]["env"]


def test_the_default_file_has_the_labelling_and_housekeeping_deployments():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {(d["entrypoint"].rsplit(":", 1)[1], d["name"]) for d in spec["deployments"]}
    assert names == {("label_collection", "nightly"), ("label_collection", "on-demand"),
                     ("segment_images", "on-demand"), ("vacuum_archive", "weekly")}


@pytest.mark.parametrize("path", sorted((REPO / "deployments" / "params").glob("*.json")), ids=lambda p: p.name)
def test_parameter_set_is_valid(path):
    flow = load_flow_from_entrypoint(str(REPO / "flows/labelling.py:label_collection"))
    flow.validate_parameters(json.loads(path.read_text()))


def test_the_example_manifest_is_valid():
    manifest = load_manifest(str(REPO / "deployments/references/buildings.yaml"))
    assert list(manifest.concepts) == ["building"] and len(manifest.concept("building").references) == 3
