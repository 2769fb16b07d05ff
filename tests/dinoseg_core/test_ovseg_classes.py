"""Class files and synonyms (issue 14, item 4): parsing (comments, blank lines, ``name: prompt1; prompt2``), bad
lines named with their number, reading from any storage, the single-class refusal, and the synonym embedding (the
mean of the synonyms' template-averaged embeddings)."""

from __future__ import annotations

import fsspec
import pytest
import torch
import torch.nn.functional as F

from dinoseg_core.errors import InputError
from dinoseg_core.io.classfile import read_classes
from dinoseg_core.ovseg import load_dinotxt
from dinoseg_core.ovseg.classes import ClassList, parse_class_file, parse_class_list, require_background

CLASS_FILE = """# land cover, 2024 survey
building

road: road; street;  highway   # three synonyms
solar panel:solar panel;photovoltaic array
  water  # a trailing comment
"""


def test_class_file_comments_blank_lines_and_synonyms():
    parsed = parse_class_file(CLASS_FILE, "classes.txt")
    assert parsed == ClassList(
        names=("building", "road", "solar panel", "water"),
        synonyms=((), ("road", "street", "highway"), ("solar panel", "photovoltaic array"), ()),
    )
    assert parsed.prompts == {"road": ("road", "street", "highway"),
                              "solar panel": ("solar panel", "photovoltaic array")}


@pytest.mark.parametrize("text, message", [
    ("building\n: street\n", r"classes.txt: line 2 ': street': no class name before ':'"),
    ("building\n\nroad: street;\n", r"classes.txt: line 3 'road: street;': an empty prompt"),
    ("# nothing\n\n", r"classes.txt: no class in the file"),
    ("road\nwater\nRoad: street\n", r"classes.txt: class names #0 'road' and #2 'Road' are duplicates"),
], ids=["no-name", "empty-prompt", "empty-file", "duplicate"])
def test_bad_class_files_name_the_line(text, message):
    with pytest.raises(InputError, match=message):
        parse_class_file(text, "classes.txt")


def test_a_list_takes_the_same_synonym_form():
    assert parse_class_list("building,road: road; street") == ClassList(("building", "road"), ((), ("road", "street")))
    assert parse_class_list(["grass"]).names == ("grass",)


def test_read_classes_from_any_storage_or_a_list(tmp_path):
    url = "memory://ovseg-classes/classes.txt"
    with fsspec.open(url, "w") as fh:
        fh.write(CLASS_FILE)
    assert read_classes("@" + url).names == ("building", "road", "solar panel", "water")
    (tmp_path / "c.txt").write_bytes("\ufeffgrass\nfield: ﬁeld\n".encode())  # a BOM, as Notepad writes
    assert read_classes(f"@{tmp_path}/c.txt") == ClassList(("grass", "field"), ((), ("ﬁeld",)))
    assert read_classes("a,b").names == ("a", "b")
    with pytest.raises(InputError, match=r"class file .*missing.txt: cannot read it"):
        read_classes(f"@{tmp_path}/missing.txt")


def test_a_single_class_needs_a_background_option():
    with pytest.raises(InputError, match=r"one class \('road'\) and no background option.*--background-threshold 0.5"):
        require_background(["road"], {})
    require_background(["road"], {"background_threshold": 0.5})
    require_background(["road"], {"background_prompts": ["grass"]})
    require_background(["road", "grass"], {})


@pytest.fixture(scope="module")
def dinotxt():
    return load_dinotxt("random:tiny@0")


def test_synonyms_embed_as_the_mean_of_their_template_embeddings(dinotxt):
    templates = ("a photo of a {}.", "there is a {} in the scene.")
    with_synonyms = dinotxt.embed_classes(["road", "grass"], templates,
                                          synonyms={"road": ["road", "street", "highway"]})
    single = dinotxt.embed_classes(["road", "street", "highway", "grass"], templates)
    d = dinotxt.embed_dim
    for half, got in (("cls", with_synonyms.cls), ("patch", with_synonyms.patch)):
        each = getattr(single, half)
        assert torch.allclose(got[0], F.normalize(each[:3].mean(dim=0), dim=0), atol=1e-6), half
        assert torch.allclose(got[1], each[3], atol=1e-6), half
    assert with_synonyms.cls.shape == (2, d) and with_synonyms.class_names == ("road", "grass")
    plain = dinotxt.embed_classes(["road", "grass"], templates)
    assert with_synonyms.digest != plain.digest
    assert dinotxt.embed_classes(["road", "grass"], templates, synonyms={}).digest == plain.digest


def test_bad_synonyms_are_refused(dinotxt):
    with pytest.raises(InputError, match=r"synonyms for \['river'\], which are not among the classes"):
        dinotxt.embed_classes(["road", "grass"], synonyms={"river": ["stream"]})
    with pytest.raises(InputError, match=r"classes \['road'\] have an empty synonym list"):
        dinotxt.embed_classes(["road", "grass"], synonyms={"road": []})
