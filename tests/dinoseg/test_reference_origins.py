"""``dinoseg label`` checks a local manifest's references against its storage before any server starts."""

from __future__ import annotations

import pytest
import yaml

from tests.dinoseg.subprocess_cli import dinoseg
from tests.pipeline_data import TINY, write_collection


@pytest.mark.slow
def test_a_reference_outside_the_manifests_storage_needs_allow_reference_url(tmp_path):
    write_collection(str(tmp_path), tiles=1, size=64)
    manifest = {"concepts": {"roof": {"references": [{"image": "refs/ref.png", "mask": "refs/roof.png"},
                                                     {"image": "s3://shared/refs/b.png",
                                                      "mask": "s3://shared/refs/b_roof.png"}]}}}
    (tmp_path / "refs.yaml").write_text(yaml.safe_dump(manifest))
    args = ["label", "--references", str(tmp_path / "refs.yaml"), "--images", f"{tmp_path}/tiles/", "--archive",
            str(tmp_path / "a.zarr"), "--backbone", TINY, "--device", "cpu"]
    code, err, imported = dinoseg(*args)
    text = "\n".join(err)
    assert code == 2 and err[0].startswith("dinoseg: error: Invalid reference manifest") and "Traceback" not in text
    assert "concepts.roof.references[1]" in text and "s3://shared/refs/b.png" in text
    assert "references[0]" not in text  # the manifest's own folder is fine
    assert "--allow-reference-url" in text and imported == []
    # allowed: the flag repeats, and the run's prefixes reach the check
    from dinoseg.cli import build_parser
    from dinoseg.cli.label import _check_local_manifest
    from dinoseg.cli.options import run_options

    allowed = [*args, "--allow-reference-url", "s3://elsewhere/", "--allow-reference-url", "s3://shared/refs"]
    run = run_options(build_parser().parse_args(allowed))
    assert run.allow_reference_urls == ["s3://elsewhere/", "s3://shared/refs"]
    _check_local_manifest(str(tmp_path / "refs.yaml"), run.allow_reference_urls)
    assert not (tmp_path / "a.zarr").exists()
