"""The reliability suite's shared pieces: one Prefect server for the commands that are not about the temporary
server, one migrated Prefect home for those that are, and one generated collection."""

from __future__ import annotations

import os

import pytest

from tests.pipeline_data import write_collection

#: Tiles of the generated collection: small, so that a command's time is mostly its fixed cost.
TILES, SIZE = 12, 64


@pytest.fixture(scope="package")
def api_url():
    """A running Prefect server (also this process's, for commands run in-process through ``main``)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="package")
def prefect_home(tmp_path_factory):
    """A Prefect home for commands that start their own temporary server (its database is migrated by the first)."""
    return str(tmp_path_factory.mktemp("prefect-home"))


@pytest.fixture(scope="package")
def lake(tmp_path_factory):
    """``lake/tiles/tile_00N.png`` (TILES tiles of SIZE px), ``lake/refs.yaml`` (concept ``roof``)."""
    root = tmp_path_factory.mktemp("lake")
    write_collection(str(root), tiles=TILES, size=SIZE, concepts=("roof",))
    return root


def label_args(lake, archive: str, *extra: str) -> list[str]:
    """``dinoseg label`` on the lake, one tile per task, so that masks are published one by one."""
    return ["label", "--references", f"{lake}/refs.yaml", "--images", f"{lake}/tiles/", "--archive", archive,
            "--backbone", "random:tiny@0", "--device", "cpu", "--workers", "1", "--batch-size", "1", "--tau", "0.9",
            "--cache", f"{lake}/cache", *extra]


@pytest.fixture(scope="package")
def clean(api_url, lake, tmp_path_factory):
    """The masks of an undisturbed `dinoseg label` run on the lake: {"concept/file name": mask sha256}."""
    from dinoseg.cli import main
    from tests.reliability.helpers import verify_archive

    archive = str(tmp_path_factory.mktemp("clean") / "a.zarr")
    assert main(label_args(lake, archive)) == 0
    return verify_archive(archive)
