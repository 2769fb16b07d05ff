"""The vacuum flow refuses credentials as parameters (the Prefect server stores parameters in clear)."""

import pytest

from dinoseg_core.errors import InputError
from flows.maintenance import vacuum_archive


def test_vacuum_refuses_credentials_in_its_storage_options(tmp_path):
    with pytest.raises(InputError, match="storage_options.secret.*not taken as flow parameters"):
        vacuum_archive.fn(str(tmp_path / "a.zarr"), 24.0, {"endpoint_url": "http://127.0.0.1:9", "secret": "s"})
    assert not (tmp_path / "a.zarr").exists()
