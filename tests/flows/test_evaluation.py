"""The quality flows end to end: `dinoseg evaluate` reproduces an independent computation of the paper's metrics,
and `dinoseg calibrate` writes a manifest that `dinoseg label` uses as is."""

import io
import json
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from dinoseg.cli import main
from dinoseg_core.backbone import load_backbone
from dinoseg_core.config import InsidConfig
from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.io.manifest import load_manifest
from dinoseg_core.segmenter import InContextSegmenter
from tests.dinoseg_core.fss_data import write_isaid, write_reference_manifest
from tests.pipeline_data import TINY, artifacts_of


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def independent_scores(root, episodes, size=128, tau=0.9):
    """Every episode again, with the plain public API (references embedded per episode, files read with PIL), and
    the metrics from flat pixel counts: per class sum(I) / sum(U) -> mean over the fold; FB-IoU."""
    seg = InContextSegmenter(load_backbone(TINY, device="cpu"), InsidConfig(image_size=size, tau=tau))

    def read(name):
        image = np.asarray(Image.open(f"{root}/val/images/{name}.png").convert("RGB")).astype(np.float32) / 255.0
        labels = np.asarray(Image.open(f"{root}/val/semantic_png/{name}_instance_color_RGB.png")).astype(int)
        return image, labels

    inter, union = np.zeros(16), np.zeros(16)
    fb = np.zeros((2, 2))  # [background, foreground] x [intersection, union]
    for episode in episodes:
        c = episode["class_id"]
        supports = [read(n) for n in episode["supports"]]
        refs = seg.embed_references([i for i, _ in supports], [lab == c for _, lab in supports])
        image, labels = read(episode["query"])
        pred = seg.segment(refs, image).mask.ravel()
        valid = labels.ravel() != 255
        truth = (labels.ravel() == c)[valid]
        pred = pred[valid]
        inter[c] += np.sum(pred & truth)
        union[c] += np.sum(pred | truth)
        fb[1] += [np.sum(pred & truth), np.sum(pred | truth)]
        fb[0] += [np.sum(~pred & ~truth), np.sum(~pred | ~truth)]
    ious = [inter[c] / union[c] if union[c] else 0.0 for c in range(1, 6)]
    return float(np.mean(ious)), float((fb[0, 0] / fb[0, 1] + fb[1, 0] / fb[1, 1]) / 2), ious


@pytest.mark.slow
def test_evaluate_on_an_isaid_layout_matches_an_independent_implementation(tmp_path, capsys, monkeypatch):
    root = tmp_path / "iSAID"
    write_isaid(str(root), n_images=6, size=128)
    out = tmp_path / "report"
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # on a terminal, each fold draws a progress bar
    code = main(["evaluate", "--dataset", str(root), "--fold", "0", "--shots", "1", "--episodes", "8", "--seed", "1",
                 "--backbone", TINY, "--device", "cpu", "--image-size", "128", "--tau", "0.9", "--out", str(out)])
    assert code == 0
    monkeypatch.undo()
    printed = capsys.readouterr()
    assert "| 0 |" in printed.out and "mIoU" in printed.err + terminal.getvalue()
    bar = terminal.getvalue().split("evaluate fold 0")[-1].split("\n")[0].rsplit("\r", 1)[-1]
    assert "8/8" in bar and "episode" in bar, terminal.getvalue()[-500:]
    result = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.md").read_text().startswith("# INSID3 evaluation")
    fold = result["folds"][0]
    assert result["layout"] == "isaid" and len(fold["episodes"]) == 8
    assert fold["images_extracted"] == len({n for e in fold["episodes"] for n in [e["query"], *e["supports"]]})
    miou, fb_iou, ious = independent_scores(root, fold["episodes"])
    assert 0 < miou < 1  # the test can fail: some class has a non-trivial score
    assert abs(fold["miou"] - miou) < 1e-6 and abs(fold["fb_iou"] - fb_iou) < 1e-6
    assert [fold["classes"][str(c)]["iou"] for c in range(1, 6)] == pytest.approx(ious, abs=1e-6)


@pytest.mark.slow
def test_calibrate_writes_a_manifest_that_label_uses_as_is(tmp_path, capsys, monkeypatch):
    refs = write_reference_manifest(str(tmp_path), concepts=("water", "roof"), shots=2, size=128)
    out = tmp_path / "calibrated.yaml"
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # on a terminal, a progress bar over the concepts
    code = main(["calibrate", "--references", refs, "--out", str(out), "--backbone", TINY, "--device", "cpu",
                 "--image-size", "128", "--taus", "0.6", "0.9", "--merge-thresholds", "0.2", "0.4"])
    assert code == 0
    monkeypatch.undo()
    assert "| water | leave-one-out (2) |" in capsys.readouterr().out
    assert "calibrate" in terminal.getvalue() and "2/2" in terminal.getvalue(), terminal.getvalue()[-500:]
    text = out.read_text()
    report = json.loads((tmp_path / "calibrated.calibration.json").read_text())
    calibrated = load_manifest(str(out))
    for result in report["concepts"]:
        name, chosen = result["concept"], result["chosen"]
        assert f"# {name}: leave-one-out, 2 fold(s): IoU {chosen['iou']:.3f}" in text
        assert calibrated.config_for(name).tau == chosen["tau"] and calibrated.config_for(name).image_size == 128
        assert len(result["trials"]) == 4 and chosen["iou"] >= result["default"]["iou"]
    assert yaml.safe_load(text)["concepts"]["water"]["references"][0]["image"] == "refs/r0.png"  # kept relative
    artifacts = {a["key"] for a in artifacts_of_latest("calibrate-references")}
    assert {"dinoseg-calibrate-references-summary", "dinoseg-calibrate-references-search"} <= artifacts

    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "t.png").write_bytes((tmp_path / "refs" / "r1.png").read_bytes())
    archive = tmp_path / "a.zarr"
    assert main(["label", "--references", str(out), "--images", str(tmp_path / "tiles"), "--archive", str(archive),
                 "--backbone", TINY, "--device", "cpu", "--cache", str(tmp_path / "cache"), "--workers", "1"]) == 0
    store = MaskArchive.open(str(archive), mode="r")
    for result in report["concepts"]:
        (concept, key), = store.list_masks(result["concept"])
        config = store.mask_record(concept, key)["config"]
        assert (config["tau"], config["merge_threshold"]) == (result["chosen"]["tau"],
                                                               result["chosen"]["merge_threshold"])


def artifacts_of_latest(flow_name):
    """The artifacts of the latest run of ``flow_name``, through the REST API."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    body = {"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_DESC", "limit": 1, "offset": 0}
    runs = httpx.post(f"{api}/flow_runs/filter", json=body).json()

    class State:  # what artifacts_of reads
        class state_details:
            flow_run_id = runs[0]["id"]

    return artifacts_of(State)


@pytest.mark.slow
def test_calibrate_on_a_scene_writes_the_global_weight_that_label_uses(tmp_path, capsys):
    from dinoseg_core.geo.synthetic import write_synthetic_geotiff
    from dinoseg_core.io import imageio

    refs = write_reference_manifest(str(tmp_path), concepts=("water", "roof"), shots=2, size=128)
    (tmp_path / "extra" / "images").mkdir(parents=True)
    scene = tmp_path / "extra" / "images" / "s0.tif"
    write_synthetic_geotiff(scene, 256, tile=128, seed=7, labels_path=tmp_path / "l.tif", concept="water")
    import rasterio

    with rasterio.open(tmp_path / "l.tif") as labels:
        imageio.write_mask_png(str(tmp_path / "extra" / "masks" / "water" / "s0.png"), labels.read(1) == 1)
    out = tmp_path / "calibrated.yaml"
    scene_options = ["--bands", "3,2,1", "--radiometry", "fixed:300,6300", "--scene-overlap", "32"]
    assert main(["calibrate", "--references", refs, "--out", str(out), "--extra", str(tmp_path / "extra"),
                 "--backbone", TINY, "--device", "cpu", "--image-size", "128", "--tau", "0.9", "--taus", "0.9",
                 "--merge-thresholds", "0.2", "--scene-global-weights", "0", "0.75", *scene_options]) == 0
    printed = capsys.readouterr()
    report = json.loads((tmp_path / "calibrated.calibration.json").read_text())
    water, roof = (next(r for r in report["concepts"] if r["concept"] == n) for n in ("water", "roof"))
    chosen = water["scene"]["chosen"]
    assert [t["global_weight"] for t in water["scene"]["trials"]] == [0.0, 0.5, 0.75]
    assert water["scene"]["windows_extracted"] == 10 and chosen["iou"] >= water["scene"]["default"]["iou"]
    assert chosen["global_weight"] != 0.5  # measured, not the default: the test below can tell them apart
    assert f"water: global_weight {chosen['global_weight']:g} (IoU {chosen['iou']:.3f}" in printed.out
    assert "roof: global weight not searched: no GeoTIFF/COG scene" in printed.err and not roof["scene"]["searched"]
    text = out.read_text()
    assert f"# water on 1 scene(s), windowed: IoU {chosen['iou']:.3f} with global_weight" in text
    calibrated = load_manifest(str(out))
    assert calibrated.scene_for("water").global_weight == chosen["global_weight"]
    assert calibrated.scene_for("roof").global_weight == 0.5

    archive = tmp_path / "a.zarr"
    assert main(["label", "--references", str(out), "--images", str(scene), "--archive", str(archive),
                 "--backbone", TINY, "--device", "cpu", "--cache", str(tmp_path / "cache"), "--workers", "1",
                 *scene_options]) == 0
    store = MaskArchive.open(str(archive), mode="r")
    weights = {}
    for concept in ("water", "roof"):
        (_, key), = store.list_masks(concept)
        weights[concept] = store.mask_record(concept, key)["config"]["scene"]["global_weight"]
    assert weights == {"water": chosen["global_weight"], "roof": 0.5}
