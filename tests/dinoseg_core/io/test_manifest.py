"""Reference-set manifests: parsing, validation messages with field paths, URI resolution, content hashing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap

import pytest

from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError, ObjectNotFoundError
from dinoseg_core.io.manifest import (
    ConceptSpec,
    ReferencePair,
    concept_hash,
    load_manifest,
    manifest_hash,
    parse_manifest,
    reference_content_hashes,
    resolve_uri,
)

MANIFEST = """\
version: 1
description: test references
config: {image_size: 512}
concepts:
  roof:
    references:
      - {image: refs/a.png, mask: refs/a_mask.png}
      - {image: refs/b.png, mask: masks/b.png}
    config: {tau: 0.55, crf: true}
  field:
    description: crop fields
    references:
      - {image: refs/a.png, mask: refs/a_field.png}
"""


def _folder(root, manifest=MANIFEST, name="refs.yaml"):
    """A reference folder: the manifest plus small files standing in for the images and masks."""
    (root / "refs").mkdir(parents=True)
    (root / "masks").mkdir()
    for rel, content in {"refs/a.png": b"A", "refs/a_mask.png": b"AM", "refs/b.png": b"B", "masks/b.png": b"BM",
                         "refs/a_field.png": b"AF"}.items():
        (root / rel).write_bytes(content)
    (root / name).write_text(manifest)
    return root / name


def _error(text, url="s3://bucket/project/refs.yaml"):
    with pytest.raises(InputError) as info:
        parse_manifest(text, url)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ loading
def test_load_yaml_manifest(tmp_path):
    manifest = load_manifest(str(_folder(tmp_path)))
    assert list(manifest.concepts) == ["roof", "field"]  # file order kept
    roof = manifest.concepts["roof"]
    assert isinstance(roof, ConceptSpec) and roof.name == "roof"
    assert roof.references == (
        ReferencePair(str(tmp_path / "refs/a.png"), str(tmp_path / "refs/a_mask.png")),
        ReferencePair(str(tmp_path / "refs/b.png"), str(tmp_path / "masks/b.png")),
    )
    assert roof.config_overrides == {"image_size": 512, "tau": 0.55, "crf": True}
    assert manifest.concepts["field"].config_overrides == {"image_size": 512}
    assert manifest.concepts["field"].description == "crop fields" and manifest.description == "test references"
    assert manifest.config_defaults == {"image_size": 512}

    base = InsidConfig(merge_threshold=0.3)
    assert manifest.config_for("roof", base) == InsidConfig(image_size=512, tau=0.55, crf=True, merge_threshold=0.3)
    assert manifest.config_for("field") == InsidConfig(image_size=512)
    with pytest.raises(InputError, match=r"'water' is not in the manifest .* \['field', 'roof'\]"):
        manifest.config_for("water", base)
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.url = "elsewhere"  # type: ignore[misc]
    assert len(manifest.reference_urls()) == 5
    assert json.loads(json.dumps(manifest.to_dict()))["concepts"]["roof"]["config"]["tau"] == 0.55


def test_load_json_manifest_and_list_form(tmp_path):
    doc = {"concepts": [{"name": "roof", "references": [{"image": "a.png", "mask": "a_m.png"}]}]}
    (tmp_path / "refs.json").write_text(json.dumps(doc))
    manifest = load_manifest(tmp_path / "refs.json")
    assert manifest.concepts["roof"].references[0] == ReferencePair(str(tmp_path / "a.png"), str(tmp_path / "a_m.png"))
    assert manifest.config_for("roof") == InsidConfig()


def test_missing_manifest_names_the_url(tmp_path):
    with pytest.raises(ObjectNotFoundError, match="nothing.yaml"):
        load_manifest(str(tmp_path / "nothing.yaml"))


# ---------------------------------------------------------------------------------------------- validation
def test_errors_name_every_bad_field_path():
    message = _error(textwrap.dedent("""\
        concepts:
          roof:
            references:
              - {image: a.png}
              - {image: b.png, mask: b_m.png, weight: 2}
              - {image: c.png, mask: 7}
            config: {tauu: 0.5, crf: 1}
          field:
            references: []
        """))
    assert "concepts.roof.references[0].mask: field required" in message
    assert "concepts.roof.references[1].weight: unknown field 'weight'" in message
    assert "concepts.roof.references[2].mask: input should be a valid string" in message
    assert "concepts.roof.config.tauu: unknown INSID3 config field 'tauu'; known fields: image_size" in message
    assert "concepts.roof.config.crf: input should be a valid boolean" in message
    assert "concepts.field.references: at least one {image, mask} reference is needed" in message
    assert message.startswith("Invalid reference manifest s3://bucket/project/refs.yaml:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("concepts: {}", "concepts: at least one concept is needed"),
        ("version: 1", "concepts: field required"),
        ("concepts: {roof: {}}", "concepts.roof.references: field required"),
        ("colour: red\nconcepts: {roof: {references: [{image: a, mask: b}]}}", "colour: unknown field 'colour'"),
        ("version: 2\nconcepts: {roof: {references: [{image: a, mask: b}]}}",
         "version: unsupported manifest version 2; this dinoseg reads version 1"),
        ("config: {image_size: 8}\nconcepts: {roof: {references: [{image: a, mask: b}]}}",
         "config: image_size=8: must be at least one patch"),
        ("concepts: {roof: {references: [{image: a, mask: b}], config: {tau: 1.5}}}",
         "concepts.roof.config: tau=1.5: must be in (0, 1]"),
        ("concepts: {roof: {references: [{image: a, mask: b}], config: {basis_source: white}}}",
         "concepts.roof.config.basis_source: input should be 'black' or 'noise'"),
        ("concepts: {roof: {references: [{image: a.png, mask: a.png}]}}",
         "concepts.roof.references[0]: image and mask are the same file"),
        ("concepts: {my roof: {references: [{image: a, mask: b}]}}", "concept name 'my roof' is not allowed"),
        ("concepts:\n  roof: {references: [{image: a, mask: b}]}\n  roof: {references: [{image: c, mask: d}]}\n",
         "concepts: duplicate concept name 'roof' (lines 2 and 3)"),
        ("concepts:\n  roof: {references: [{image: a, mask: b, mask: c}]}\n",
         "concepts.roof.references[0]: duplicate key 'mask'"),
        ("concepts: {roof: {references: [{image: a, mask: b}]}, Roof: {references: [{image: a, mask: b}]}}",
         "duplicate concept name 'Roof' (same as 'roof' ignoring case"),
        ("concepts: [{name: roof, references: [{image: a, mask: b}]}, {name: roof, references: []}]",
         "concepts: duplicate concept name 'roof' (entry [1])"),
        ("- just\n- a list\n", "expected a mapping with a 'concepts' key"),
        ("", "got an empty document"),
        ("concepts: [roof", "not valid YAML"),
    ],
)
def test_invalid_manifests(text, expected):
    assert expected in _error(text)


def test_json_duplicates_and_syntax():
    dup = '{"concepts": {"roof": {"references": [{"image": "a", "mask": "b"}]}, "roof": {"references": []}}}'
    assert "concepts: duplicate concept name 'roof'" in _error(dup, "s3://b/refs.json")
    assert "not valid JSON" in _error('{"concepts": ', "s3://b/refs.json")


# ----------------------------------------------------------------------------------------- URI resolution
@pytest.mark.parametrize(
    ("manifest_url", "ref", "expected"),
    [
        ("s3://bucket/project/refs.yaml", "refs/a.png", "s3://bucket/project/refs/a.png"),
        ("s3://bucket/project/refs.yaml", "./refs/../b.png", "s3://bucket/project/b.png"),
        ("s3://bucket/project/refs.yaml", "../shared/c.png", "s3://bucket/shared/c.png"),
        ("s3://bucket/refs.yaml", "a.png", "s3://bucket/a.png"),
        ("s3://bucket/project/refs.yaml", "gs://other/x.png", "gs://other/x.png"),
        ("memory://refs/m.yaml", "a.png", "memory://refs/a.png"),
        ("file:///data/refs/m.yaml", "a.png", "file:///data/refs/a.png"),
        ("/data/refs/m.yaml", "../imgs/a.png", "/data/imgs/a.png"),
        ("/data/refs/m.yaml", "/elsewhere/a.png", "/elsewhere/a.png"),
        ("simplecache::s3://bucket/p/m.yaml", "a.png", "simplecache::s3://bucket/p/a.png"),
    ],
)
def test_resolve_uri(manifest_url, ref, expected):
    assert resolve_uri(manifest_url, ref) == expected


def test_resolve_uri_refuses_ambiguous_or_escaping_references():
    with pytest.raises(InputError, match="absolute path"):
        resolve_uri("s3://bucket/p/refs.yaml", "/data/a.png")
    with pytest.raises(InputError, match="points above s3://bucket"):
        resolve_uri("s3://bucket/p/refs.yaml", "../../other-bucket/a.png")
    assert "points above" in _error("concepts: {roof: {references: [{image: ../../a, mask: b}]}}")


# -------------------------------------------------------------------------------------------------- hashes
def test_hash_follows_content_not_location(tmp_path):
    first = load_manifest(_folder(tmp_path / "one"))
    hashes = reference_content_hashes(first)
    assert len(hashes) == 5 and all(len(h) == 64 for h in hashes.values())
    h1 = manifest_hash(first, hashes)
    assert h1 == manifest_hash(first, dict(reversed(list(hashes.items()))))

    shutil.copytree(tmp_path / "one", tmp_path / "moved")  # same folder elsewhere: same hash
    moved = load_manifest(tmp_path / "moved" / "refs.yaml")
    moved_hashes = reference_content_hashes(moved)
    assert manifest_hash(moved, moved_hashes) == h1
    assert concept_hash(moved, "roof", moved_hashes) == concept_hash(first, "roof", hashes)

    # concept order in the file does not matter
    swapped = MANIFEST.split("  field:")
    reordered = swapped[0].replace("concepts:\n", "concepts:\n  field:" + swapped[1])
    assert list(parse_manifest(reordered, first.url).concepts) == ["field", "roof"]
    assert manifest_hash(parse_manifest(reordered, first.url), hashes) == h1

    # editing one mask changes that concept's hash, and only that one
    (tmp_path / "moved" / "masks" / "b.png").write_bytes(b"edited")
    edited_hashes = reference_content_hashes(moved)
    assert manifest_hash(moved, edited_hashes) != h1
    assert concept_hash(moved, "roof", edited_hashes) != concept_hash(first, "roof", hashes)
    assert concept_hash(moved, "field", edited_hashes) == concept_hash(first, "field", hashes)

    # overrides, wherever they are written, enter the hash through their effective value
    changed = parse_manifest(MANIFEST.replace("tau: 0.55", "tau: 0.5"), first.url)
    assert concept_hash(changed, "roof", hashes) != concept_hash(first, "roof", hashes)
    moved_default = parse_manifest(
        MANIFEST.replace("config: {image_size: 512}\n", "").replace("tau: 0.55, crf: true", "tau: 0.55, crf: true, "
                                                                    "image_size: 512"), first.url)
    assert concept_hash(moved_default, "roof", hashes) == concept_hash(first, "roof", hashes)

    with pytest.raises(InputError, match="No content hash for .*a_mask.png"):
        manifest_hash(first, {k: v for k, v in hashes.items() if not k.endswith("a_mask.png")})


@pytest.mark.integration
def test_manifest_on_s3_resolves_against_the_bucket(s3_server, tmp_path):
    import s3fs
    so = s3_server["storage_options"]
    bucket = s3_server["make_bucket"]()
    local = _folder(tmp_path / "local")
    fs = s3fs.S3FileSystem(**so)
    fs.put(str(tmp_path / "local") + "/", bucket.removeprefix("s3://") + "/project/", recursive=True)
    remote = load_manifest(f"{bucket}/project/refs.yaml", storage_options=so)
    assert remote.concepts["roof"].references[1] == ReferencePair(f"{bucket}/project/refs/b.png",
                                                                  f"{bucket}/project/masks/b.png")
    local_manifest = load_manifest(local)
    assert manifest_hash(remote, reference_content_hashes(remote, so)) == manifest_hash(
        local_manifest, reference_content_hashes(local_manifest))


# ------------------------------------------------------------------ references stay within the manifest's storage
def _one_reference(image: str, mask: str = "refs/m.png") -> str:
    return f"concepts:\n  roof:\n    references:\n      - {{image: '{image}', mask: '{mask}'}}\n"


@pytest.mark.parametrize("manifest_url, image", [
    ("s3://lake/refs.yaml", "file:///etc/passwd"),
    ("s3://lake/refs.yaml", "s3://lake-2/a.png"),           # a bucket whose name starts like the manifest's
    ("s3://lake/refs.yaml", "gs://lake/a.png"),
    ("s3://lake/refs.yaml", "s3://lake/../other/a.png"),     # a full URL climbing out of the bucket
    ("s3://lake/refs.yaml", "s3://lake/%2e%2e/other/a.png"),
    ("https://host.example/refs.yaml", "https://evil.example/a.png"),
    ("https://host.example/refs.yaml", "file:///home/user/.aws/credentials"),
    ("/data/refs.yaml", "s3://lake/a.png"),                   # same protocol only, local -> remote too
])
def test_references_outside_the_manifests_storage_are_refused(manifest_url, image):
    with pytest.raises(InputError) as err:
        parse_manifest(_one_reference(image), manifest_url)
    message = str(err.value)
    assert "concepts.roof.references[0]" in message and "outside the manifest's own storage" in message
    assert "--allow-reference-url" in message


@pytest.mark.parametrize("manifest_url, image, allow, resolved", [
    ("s3://lake/refs.yaml", "s3://lake/x/a.png", (), "s3://lake/x/a.png"),
    ("s3://lake/refs.yaml", "s3a://lake/x/a.png", (), "s3a://lake/x/a.png"),
    ("s3://lake/p/refs.yaml", "../a.png", (), "s3://lake/a.png"),
    ("/data/refs.yaml", "/elsewhere/a.png", (), "/elsewhere/a.png"),       # a local manifest names local files
    ("/data/refs.yaml", "file:///elsewhere/a.png", (), "file:///elsewhere/a.png"),
    ("s3://lake/refs.yaml", "s3://other/refs/a.png", ("s3://other/refs/",), "s3://other/refs/a.png"),
    ("s3://lake/refs.yaml", "s3://other/refs/a.png", ("s3://other/refs",), "s3://other/refs/a.png"),
    ("s3://lake/refs.yaml", "file:///srv/refs/a.png", ("/srv/refs",), "file:///srv/refs/a.png"),
])
def test_references_within_the_storage_or_an_allowed_prefix(manifest_url, image, allow, resolved):
    manifest = parse_manifest(_one_reference(image), manifest_url, allow_reference_urls=allow)
    assert manifest.concepts["roof"].references[0].image_url == resolved


@pytest.mark.parametrize("image, allow", [
    ("s3://other/refs2/a.png", ("s3://other/refs",)),          # a prefix covers whole path segments only
    ("s3://other/refs/../secret/a.png", ("s3://other/refs/",)),
    ("file:///etc/passwd", ("s3://other/",)),
])
def test_an_allowed_prefix_does_not_open_more(image, allow):
    with pytest.raises(InputError):
        parse_manifest(_one_reference(image), "s3://lake/refs.yaml", allow_reference_urls=allow)


@pytest.mark.integration
def test_manifest_on_s3_naming_a_local_file_is_refused_before_reading_it(s3_server, tmp_path):
    """Refused while the manifest is parsed (no reference is read then), and no error shows the file's bytes."""
    import s3fs

    so = s3_server["storage_options"]
    bucket = s3_server["make_bucket"]()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"TOPSECRET-CONTENT-0123456789")
    manifest = _one_reference(f"file://{secret}", f"file://{secret}.mask")
    s3fs.S3FileSystem(**so).pipe(f"{bucket.removeprefix('s3://')}/refs.yaml", manifest.encode())
    with pytest.raises(InputError) as err:
        load_manifest(f"{bucket}/refs.yaml", storage_options=so)
    assert "outside the manifest's own storage" in str(err.value) and "TOPSECRET" not in str(err.value)


def test_undecodable_manifest_error_shows_no_bytes(tmp_path):
    path = tmp_path / "refs.yaml"
    path.write_bytes(b"concepts: \xff\xfeSECRET-BYTES")
    with pytest.raises(InputError) as err:
        load_manifest(str(path))
    message = str(err.value)
    assert "UTF-8" in message and "byte 10 of 24" in message
    assert "SECRET" not in message and "xff" not in message


def test_a_downgrade_to_plain_http_is_another_protocol():
    with pytest.raises(InputError, match="outside the manifest's own storage"):
        parse_manifest(_one_reference("http://host.example/a.png"), "https://host.example/refs.yaml")


def test_a_concepts_scene_options_apply_to_its_scenes_only():
    text = textwrap.dedent("""\
        concepts:
          water:
            references: [{image: a.png, mask: a_water.png}]
            scene: {global_weight: 0.25, threshold: 0.4}
          roof:
            references: [{image: a.png, mask: a_roof.png}]
        """)
    manifest = parse_manifest(text, "/data/refs.yaml")
    from dinoseg_core.config import SceneConfig

    water = manifest.scene_for("water", SceneConfig(overlap=32))
    assert (water.global_weight, water.threshold, water.overlap) == (0.25, 0.4, 32)
    assert manifest.scene_for("roof") == SceneConfig()
    assert manifest.to_dict()["concepts"]["water"]["scene"] == {"global_weight": 0.25, "threshold": 0.4}
    assert "scene" not in manifest.to_dict()["concepts"]["roof"]  # a manifest without scenes reads as before
    hashes = {url: "0" * 64 for url in manifest.reference_urls()}
    plain = parse_manifest(text.replace("scene: {global_weight: 0.25, threshold: 0.4}", ""), "/data/refs.yaml")
    assert concept_hash(manifest, "water", hashes) == concept_hash(plain, "water", hashes)  # tiles unaffected

    for scene, expected in [("{global_weight: 1.5}", "concepts.water.scene: global_weight=1.5: must be in [0, 1]"),
                            ("{global_weight: '0.2'}", "concepts.water.scene.global_weight: input should be a valid"),
                            ("{overlap: 32}", "concepts.water.scene.overlap: unknown per-concept scene field 'overlap'"),
                            ("{context_size: 8}", "concepts.water.scene: context_size=8: must be an int of at least")]:
        with pytest.raises(InputError) as err:
            parse_manifest(text.replace("{global_weight: 0.25, threshold: 0.4}", scene), "/data/refs.yaml")
        assert expected in str(err.value), str(err.value)
