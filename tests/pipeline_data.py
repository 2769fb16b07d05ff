"""Generated collections and manifests for the pipeline tests (seeded, small)."""

from __future__ import annotations

import yaml

from dinoseg_core.io import imageio, storage
from dinoseg_core.synthetic import generate_scene

#: A 2-block random backbone: the pipeline's behaviour, not mask quality, is under test here.
TINY = "random:tiny@0"
METHOD = {"image_size": 128, "tau": 0.9}


def write_collection(root: str, tiles: int = 4, size: int = 128, storage_options=None, concepts=("roof", "water")):
    """``root/tiles/tile_NNN.png``, ``root/refs/...`` and ``root/refs.yaml``; returns the tile URLs."""
    urls = []
    for index in range(tiles):
        url = storage.join(root, "tiles", f"tile_{index:03d}.png")
        imageio.write_image_png(url, generate_scene(100 + index, size=size).image, storage_options)
        urls.append(url)
    reference = generate_scene(1, size=size)
    imageio.write_image_png(storage.join(root, "refs", "ref.png"), reference.image, storage_options)
    entries = {}
    for concept in concepts:
        imageio.write_mask_png(storage.join(root, "refs", f"{concept}.png"), reference.labels[concept], storage_options)
        entries[concept] = {"references": [{"image": "refs/ref.png", "mask": f"refs/{concept}.png"}]}
    manifest = {"version": 1, "config": METHOD, "concepts": entries}
    storage.write_bytes(storage.join(root, "refs.yaml"), yaml.safe_dump(manifest).encode(), storage_options)
    return urls


def write_text_tiles(root: str, n: int = 3, size: int = 64) -> list[str]:
    """``root/tiles/tile_NN.png``: generated shapes on grass for the open-vocabulary tests; returns the URLs."""
    from tests.ovseg_factory import shapes_image

    urls = []
    for i in range(n):
        url = storage.join(root, "tiles", f"tile_{i:02d}.png")
        imageio.write_image_png(url, shapes_image(100 + i, size)[0])
        urls.append(url)
    return urls


def assert_failure_named_everywhere(state, archive: str, name: str, labelled: int) -> None:
    """A run with one bad image ``name``: Failed, named in the state, the summary, the run log and the table."""
    import json

    from dinoseg_core.io.archive import MaskArchive

    assert state.is_failed() and name in state.message
    summary = state.result(raise_on_failure=False)
    assert summary["labelled"] == labelled and summary["failed"] == 1
    log = MaskArchive.open(archive, mode="r").run_logs()[0]
    assert log["failures"][0]["uri"].endswith(name) and log["failures"][0]["reason"]
    table = next(a for a in artifacts_of(state) if a["type"] == "table")
    assert name in json.dumps(table["data"])


def artifacts_of(state) -> list[dict]:
    """The artifacts a flow run created, read back from the server's REST API (the 3.8.8 client sends None for
    limit/sort, which the server rejects)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}},
            "limit": 50, "offset": 0, "sort": "CREATED_DESC"}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    response.raise_for_status()
    return response.json()


def concept_set(root: str, method: dict | None = None, cache: str | None = None, bands=None):
    """The INSID3 labeller of ``root/refs.yaml`` on the tiny backbone (prepared through ``task.fn``)."""
    from dinoseg_core.io.manifest import load_manifest
    from tasks import runtime
    from tasks.concepts import ConceptSet, prepare_concept
    from tasks.options import RunOptions
    from tasks.runtime import BackboneSpec

    spec, run = BackboneSpec(TINY, device="cpu"), RunOptions(cache=cache)
    manifest = load_manifest(f"{root}/refs.yaml")
    concepts = tuple(prepare_concept.fn(manifest, name, spec, method, bands, run) for name in manifest.concepts)
    model = runtime.backbone(spec)
    return ConceptSet(spec, model.fingerprint, model.is_random, concepts, bands=bands, cache_url=cache)
