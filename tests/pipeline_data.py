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
