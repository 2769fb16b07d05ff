"""CLIP's byte-pair encoding for the dino.txt text tower, on transformers' maintained ``CLIPTokenizer``.

dino.txt tokenises with OpenAI CLIP's ``SimpleTokenizer`` over ``bpe_simple_vocab_16e6.txt.gz``. That file holds
only the *merges* (a header line, then one ``"a b"`` pair per line); the vocabulary is derived from it exactly as
CLIP does (``clip/simple_tokenizer.py``):

1. the 256 byte symbols of ``bytes_to_unicode()``, in its order;
2. the same 256 with the end-of-word marker ``</w>`` appended;
3. one token per merge, its two parts joined, for the first 48,894 merges (``lines[1:49152 - 256 - 2 + 1]``);
4. ``<|startoftext|>`` and ``<|endoftext|>``.

Token ids are positions in that list (49,408 for the real file; SOT = 49406, EOT = 49407). The vocabulary and
merges then feed ``transformers.CLIPTokenizer(vocab=..., merges=...)``, whose pre-tokeniser (CLIP's regex, then
byte-level) and BPE model (``</w>`` suffix) are Hugging Face's port of the same algorithm. Its normaliser (NFC,
whitespace collapsed, lower case in Rust) is replaced by CLIP's own clean-up in Python, which differs on a few
characters (Python lower-cases a word-final ``Σ`` to ``ς``): ``basic_clean`` (``ftfy.fix_text``, a dependency,
which turns ``’`` into ``'``, ``ﬁ`` into ``fi`` and full-width letters into ASCII, so that ``a dog’s house``
tokenises as Meta's tokenizer does; then ``html.unescape`` twice, then strip), ``whitespace_clean`` (``\\s+`` ->
one space, strip) and ``str.lower``.

A sequence is ``[SOT] + tokens + [EOT]`` padded with 0 to the context length (77), as Meta's
``dinov3/eval/text/tokenizer.py`` does; the text tower pools at the largest id of each row, which is the EOT.
Where Meta silently truncates a text longer than the context, :meth:`ClipTokenizer.tokenize` raises an
:class:`~dinoseg_core.errors.InputError` naming the text (``truncate=True`` restores Meta's behaviour).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import ftfy
import torch

from dinoseg_core.errors import CheckpointError, InputError

__all__ = ["CONTEXT_LENGTH", "ClipTokenizer", "bytes_to_unicode", "load_tokenizer", "vocab_from_merges"]

#: dino.txt's (and CLIP's) text context, start and end tokens included.
CONTEXT_LENGTH = 77
#: Merges CLIP reads from the file: ``49152 - 256 - 2``; with 512 byte symbols and 2 special tokens the
#: vocabulary has 49,408 entries.
CLIP_NUM_MERGES = 49152 - 256 - 2
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
_WHITESPACE = re.compile(r"\s+")
_EXPECTED = ("CLIP's byte-pair-encoding merges file, such as bpe_simple_vocab_16e6.txt.gz (gzipped or plain text: "
             "a header line, then one 'a b' merge per line)")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable unicode characters.

    Printable latin-1 bytes map to themselves; the others to ``chr(256 + n)`` in byte order. The dict's order is
    the order of the first 256 vocabulary entries.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def vocab_from_merges(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary for ``merges`` (see the module docstring): token -> id."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    if len(vocab) != len(tokens):
        raise CheckpointError(f"the merges produce duplicate tokens ({len(tokens) - len(vocab)} of them); expected "
                              f"{_EXPECTED} in which every merge creates a new token")
    return vocab


def _parse_merges(data: bytes, shown: str) -> list[tuple[str, str]]:
    if not data:
        raise CheckpointError(f"{shown}: the file is empty. Expected {_EXPECTED}.")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise CheckpointError(f"{shown}: corrupt gzip data ({exc}). Expected {_EXPECTED}.") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{shown}: not UTF-8 text ({exc}). Expected {_EXPECTED}.") from exc
    # Line 0 is the header ("#version: 0.2 ..."); CLIP reads the next CLIP_NUM_MERGES lines.
    lines = text.split("\n")[1:CLIP_NUM_MERGES + 1]
    merges = []
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue  # a trailing newline (short files); the real file has none inside the range read
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{shown}: line {number} has {len(parts)} fields, not a merge of two symbols. "
                                  f"Expected {_EXPECTED}.")
        merges.append((parts[0], parts[1]))
    return merges


class ClipTokenizer:
    """CLIP's BPE tokenizer (see the module docstring). Build with :func:`load_tokenizer` or the classmethods.

    Attributes:
        vocab_size: number of token ids (49,408 for CLIP's file).
        sot_id / eot_id: ids of ``<|startoftext|>`` / ``<|endoftext|>`` (the last two).
        digest: sha256 hex of the vocabulary (tokens in id order and the merges): part of model fingerprints.
        source: where the merges came from.
    """

    def __init__(self, merges: Sequence[tuple[str, str]], *, source: str = "<merges>"):
        from transformers import CLIPTokenizer

        self.source = source
        self.merges = [tuple(m) for m in merges]
        self._vocab = vocab_from_merges(self.merges)
        try:
            self._hf = CLIPTokenizer(vocab=dict(self._vocab), merges=list(self.merges))
        except Exception as exc:  # tokenizers rejects merges whose parts are not tokens
            raise CheckpointError(f"{source}: the merges do not form a valid BPE vocabulary ({exc}). Expected "
                                  f"{_EXPECTED}.") from exc
        self._backend = self._hf.backend_tokenizer
        # CLIP's clean-up (:meth:`clean`) replaces the Rust normaliser, whose lower case differs from Python's.
        from tokenizers import normalizers

        self._backend.normalizer = normalizers.Sequence([])
        self.vocab_size = len(self._vocab)
        self.sot_id = self._vocab[SOT]
        self.eot_id = self._vocab[EOT]
        digest = hashlib.sha256(b"dinoseg-clip-bpe-v1\n")
        for a, b in self.merges:
            digest.update(f"{a} {b}\n".encode())
        self.digest = digest.hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> ClipTokenizer:
        """From the bytes of a merges file (gzipped or not)."""
        return cls(_parse_merges(bytes(data), source), source=source)

    @classmethod
    def byte_level(cls) -> ClipTokenizer:
        """A merge-free CLIP vocabulary (514 ids: 512 byte symbols + SOT + EOT): every character is a token.

        For random towers when no merges file is given; real dino.txt weights need the real file.
        """
        return cls([], source="<byte-level, no merges>")

    def __repr__(self) -> str:
        return f"ClipTokenizer(source={self.source!r}, vocab_size={self.vocab_size})"

    @staticmethod
    def clean(text: str) -> str:
        """CLIP's clean-up before BPE: ``basic_clean`` (``ftfy.fix_text``, HTML entities unescaped twice,
        stripped), ``whitespace_clean`` (``\\s+`` -> one space) and lower case, as ``clip/simple_tokenizer.py``."""
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return _WHITESPACE.sub(" ", text).strip().lower()

    def _check_text(self, text: Any, what: str) -> str:
        if not isinstance(text, str):
            raise InputError(f"{what} must be a string, got {type(text).__name__}")
        if SOT in text or EOT in text:
            raise InputError(f"{what} {text[:80]!r} contains the special token {SOT!r} or {EOT!r}; remove it")
        return text

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without the start/end tokens."""
        text = self._check_text(text, "text")
        return list(self._backend.encode(self.clean(text), add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text."""
        cleaned = [self.clean(self._check_text(t, f"texts[{i}]")) for i, t in enumerate(texts)]
        return [list(e.ids) for e in self._backend.encode_batch(cleaned, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of BPE ids (start/end tokens and padding 0 after the end are dropped); words are separated by
        single spaces, as CLIP's decoder does (``"a dog ."`` for ``"A dog."``)."""
        ids = [int(i) for i in ids]
        if self.eot_id in ids:
            ids = ids[:ids.index(self.eot_id)]
        ids = [i for i in ids if i != self.sot_id]
        return self._hf.decode(ids, skip_special_tokens=True)

    def tokenize(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, *,
                 truncate: bool = False) -> torch.Tensor:
        """Token ids of one or more texts, as the text tower reads them.

        Args:
            texts: a string or a sequence of strings.
            context_length: row length (77 for dino.txt).
            truncate: cut texts that do not fit and end them with EOT (Meta's behaviour) instead of raising.

        Returns:
            int64 tensor (N, context_length): ``[SOT, ids..., EOT, 0, 0, ...]``.

        Raises:
            InputError: a text is not a string, contains a special token, or (without ``truncate``) needs more
                than ``context_length`` tokens; the message names it and its length.
        """
        if isinstance(texts, str):
            texts = [texts]
        rows = self.encode_batch(list(texts))
        out = torch.zeros(len(rows), context_length, dtype=torch.long)
        for i, ids in enumerate(rows):
            tokens = [self.sot_id, *ids, self.eot_id]
            if len(tokens) > context_length:
                if not truncate:
                    raise InputError(
                        f"text {texts[i][:80]!r}{'...' if len(texts[i]) > 80 else ''} is {len(tokens)} tokens long "
                        f"(with the start and end tokens); the text tower reads at most {context_length}. Shorten "
                        "the class name or the prompt template."
                    )
                tokens = tokens[:context_length]
                tokens[-1] = self.eot_id
            out[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return out


def load_tokenizer(url: str | os.PathLike[str] | None, storage_options: dict[str, Any] | None = None) -> ClipTokenizer:
    """CLIP's tokenizer from a merges file at a local path or fsspec URL; ``None`` gives
    :meth:`ClipTokenizer.byte_level` (for random towers only).

    Raises:
        CheckpointError: the file is missing, unreadable or not a merges file; the message names it.
        MissingDependencyError: the URL's fsspec backend is not installed.
    """
    if url is None:
        return ClipTokenizer.byte_level()
    from dinoseg_core.errors import MissingDependencyError, StorageError
    from dinoseg_core.io import storage

    shown = storage.display_url(url)
    try:
        data = storage.read_bytes(url, storage_options)
    except MissingDependencyError:
        raise
    except StorageError as exc:
        raise CheckpointError(f"{shown}: cannot read the BPE vocabulary ({exc}). Expected {_EXPECTED}; Meta "
                              "publishes it as dinov3/thirdparty/bpe_simple_vocab_16e6.txt.gz.") from exc
    return ClipTokenizer.from_bytes(data, source=shown)
