"""label_with_text with a class file (issue 14, item 4): a run with ``@classes.txt`` and synonyms writes one concept
per class and records the synonyms; a single class without a background option is refused before anything loads."""

from __future__ import annotations

import pytest

from dinoseg.cli import main as cli
from dinoseg_core.errors import InputError
from dinoseg_core.io.archive import MaskArchive, image_key
from flows.text import label_with_text
from tests.pipeline_data import write_text_tiles

TINY = "random:tiny@0"
OPTIONS = {"short_side": 64, "window": 64, "stride": 32, "templates": ["a photo of a {}."]}


def test_label_text_with_a_class_file_and_synonyms(tmp_path, capsys):
    root = str(tmp_path / "bucket")
    urls = write_text_tiles(root, n=2)
    (tmp_path / "classes.txt").write_text("# shapes on grass\ngrass: grass; lawn\n\nred square  # the target\n"
                                          "blue disk: blue disk; blue circle\n")
    archive = str(tmp_path / "a.zarr")
    code = cli(["label-text", "--classes", f"@{tmp_path}/classes.txt", "--images", f"{root}/tiles/*.png",
                "--archive", archive, "--dinotxt", TINY, "--device", "cpu", "--short-side", "64", "--window", "64",
                "--stride", "32", "--templates", "a photo of a {}."])
    assert code == 0, capsys.readouterr().err
    stored = MaskArchive.open(archive, mode="r")
    assert sorted({concept for concept, _ in stored.list_masks()}) == ["blue_disk", "grass", "red_square"]
    assert len(stored.list_masks()) == 6
    record = stored.load("grass", image_key(urls[0], f"{root}/tiles")).record
    assert record["class"] == "grass" and record["classes"] == ["grass", "red square", "blue disk"]
    assert stored.run_logs()[0]["synonyms"] == {"grass": ["grass", "lawn"], "blue disk": ["blue disk", "blue circle"]}


def test_the_flow_refuses_a_single_class_without_background(tmp_path):
    root = str(tmp_path / "bucket")
    write_text_tiles(root, n=1)
    state = label_with_text(classes="road", images=f"{root}/tiles/*.png", archive=str(tmp_path / "a.zarr"),
                            dinotxt=TINY, options=OPTIONS, run={"device": "cpu"}, return_state=True)
    assert state.is_failed()
    assert pytest.raises(InputError, state.result).match(r"one class \('road'\) and no background option.*"
                                                          r"background_threshold")
    assert not (tmp_path / "a.zarr").exists()
    ok = label_with_text(classes="road", images=f"{root}/tiles/*.png", archive=str(tmp_path / "b.zarr"),
                         dinotxt=TINY, options={**OPTIONS, "background_threshold": 0.5}, run={"device": "cpu"},
                         return_state=True)
    assert ok.is_completed(), ok.message
