"""CLIP BPE on transformers' CLIPTokenizer: ids equal to CLIP's algorithm on a generated merges file, round trips,
special tokens, context length."""

from __future__ import annotations

import gzip

import pytest
import torch

from dinoseg_core.errors import CheckpointError, InputError
from dinoseg_core.ovseg.tokenizer import ClipTokenizer, bytes_to_unicode, load_tokenizer, vocab_from_merges
from tests.ovseg_factory import CORPUS, ReferenceClipBPE, bpe_file_bytes, byte_encoder, learn_merges, write_bpe_vocab

KNOWN = [
    "a photo of a building.",
    "A Photo of THE road",
    "there is a river in the scene.",
    "flooded   field\tnext to\n the road",
    "the building's roof, it's red!",
    "photographs of solar panels 2024",
    "unseen words: zebra quokka",
    "café naïve 東京 🚀",
    "&amp;quot;html&amp;quot; entities",
    "",
]


@pytest.fixture(scope="module")
def merges():
    return learn_merges(CORPUS, 120)


@pytest.fixture(scope="module")
def tok(merges, tmp_path_factory):
    path = write_bpe_vocab(tmp_path_factory.mktemp("bpe") / "bpe_test_vocab.txt.gz", merges)
    return load_tokenizer(path)


def test_vocabulary_is_clip_layout(tok, merges):
    vocab = vocab_from_merges(merges)
    assert tok.vocab_size == 512 + len(merges) + 2 == len(vocab)
    assert (tok.sot_id, tok.eot_id) == (tok.vocab_size - 2, tok.vocab_size - 1)
    assert list(bytes_to_unicode().values()) == list(byte_encoder().values())
    symbols = list(bytes_to_unicode().values())
    assert vocab[symbols[0]] == 0 and vocab[symbols[0] + "</w>"] == 256 and vocab["".join(merges[0])] == 512


@pytest.mark.parametrize("text", KNOWN)
def test_ids_match_clip_algorithm_and_round_trip(tok, merges, text):
    ref = ReferenceClipBPE(merges)
    ids = tok.encode(text)
    assert ids == ref.encode(text)
    assert tok.decode(ids) == ref.decode(ids).strip()


def test_merges_are_applied(tok):
    # "photo" and "the" are frequent in the corpus, so they must be single tokens.
    for word in ("photo", "the", "building"):
        assert len(tok.encode(word)) == 1, word
    assert tok.decode(tok.encode("A photo of THE road.")) == "a photo of the road ."


def test_tokenize_layout(tok):
    out = tok.tokenize(["a photo of a building.", "road"])
    assert out.dtype == torch.long and out.shape == (2, 77)
    n = len(tok.encode("road"))
    assert out[1, 0] == tok.sot_id and out[1, n + 1] == tok.eot_id and (out[1, n + 2:] == 0).all()
    assert (out.argmax(dim=1) == torch.tensor([len(tok.encode("a photo of a building.")) + 1, n + 1])).all()


def test_too_long_text_is_a_clear_error_or_truncated(tok):
    long_text = " ".join(["zebra"] * 60)
    with pytest.raises(InputError, match=r"tokens long .*at most 77"):
        tok.tokenize(long_text)
    cut = tok.tokenize(long_text, truncate=True)
    assert cut[0, 0] == tok.sot_id and cut[0, -1] == tok.eot_id and (cut[0] != 0).all()
    fits = " ".join(["road"] * 75)  # 75 tokens + SOT + EOT = 77
    assert tok.tokenize(fits)[0, -1] == tok.eot_id


def test_special_tokens_in_text_are_refused(tok):
    with pytest.raises(InputError, match="special token"):
        tok.encode("road <|endoftext|>")
    with pytest.raises(InputError, match="must be a string"):
        tok.tokenize(["road", 3])


def test_plain_text_file_and_url(merges, tmp_path):
    import fsspec

    plain = load_tokenizer(write_bpe_vocab(tmp_path / "vocab.txt", merges, gz=False))
    url = "memory://ovseg-tokenizer/bpe.txt.gz"
    with fsspec.open(url, "wb") as fh:
        fh.write(bpe_file_bytes(merges))
    remote = load_tokenizer(url)
    assert plain.encode("a photo of the river") == remote.encode("a photo of the river")
    assert plain.digest == remote.digest


def test_byte_level_fallback():
    tok = ClipTokenizer.byte_level()
    assert tok.vocab_size == 514
    ids = tok.encode("Road")
    assert len(ids) == 4 and tok.decode(ids) == "road"


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="empty"):
        ClipTokenizer.from_bytes(b"")
    with pytest.raises(CheckpointError, match="not a merge of two symbols"):
        ClipTokenizer.from_bytes(b"#version\nab\n")
    with pytest.raises(CheckpointError, match="do not form a valid BPE vocabulary"):
        ClipTokenizer.from_bytes(gzip.compress(b"#version\nzz qq\n"))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_tokenizer(tmp_path / "missing.txt.gz")
