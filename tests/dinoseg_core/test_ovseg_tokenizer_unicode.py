"""Tokens equal CLIP's (and Meta's dino.txt) tokenizer on non-ASCII text (issue 14, item 2).

The oracle below is OpenAI CLIP's ``simple_tokenizer.py`` written out here, independently of
``dinoseg_core.ovseg.tokenizer``: ``basic_clean`` (``ftfy.fix_text``, ``html.unescape`` twice, strip),
``whitespace_clean`` (``\\s+`` -> one space, strip), lower case, CLIP's regex, byte-to-unicode, then BPE by merge rank.
It runs over the same generated merges file as ``test_ovseg_tokenizer.py``.
"""

from __future__ import annotations

import html
import random
import re

import ftfy
import pytest
import regex

from dinoseg_core.ovseg.tokenizer import load_tokenizer
from tests.ovseg_factory import CORPUS, learn_merges, write_bpe_vocab


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


class CLIPSimpleTokenizer:
    """``clip/simple_tokenizer.py``'s ``SimpleTokenizer.encode`` over ``merges`` (the oracle)."""

    pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)

    def __init__(self, merges):
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(m) for m in merges)
        vocab.extend(["<|startoftext|>", "<|endoftext|>"])
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip([tuple(m) for m in merges], range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    @staticmethod
    def basic_clean(text: str) -> str:
        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
        return text.strip()

    @staticmethod
    def whitespace_clean(text: str) -> str:
        return re.sub(r"\s+", " ", text).strip()

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _get_pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        bpe_tokens: list[int] = []
        text = self.whitespace_clean(self.basic_clean(text)).lower()
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return bpe_tokens


NAMED = [
    "a dog’s house",
    "the farmer‘s field”",
    "ﬁeld of wheat",
    "a ﬂooded ﬁeld",
    "ＡＢＣ ｆｕｌｌ－ｗｉｄｔｈ ｒｏａｄ １２３",
    "café naïve résumé Ångström",
    "Crème brûlée in São Paulo",
    "e\u0301cole (combining accent)",
    "东京 タワー 서울",
    "🚀 rocket 🛰️ satellite 🌊 water 👍🏽",
    "solar panel – dash — em‑dash",
    "&amp;quot;html&amp;quot; entities &lt;b&gt;",
    "mojibake: Ã©cole, donâ€™t",
    "tab\tand\u00a0no-break\u2003em space",
    "ΣΊΣΥΦΟΣ Straße İstanbul",
    "",
]

#: Code points the random strings draw from: ASCII, Latin-1 and Latin Extended, combining marks, Greek, Cyrillic,
#: CJK, Hangul, full-width forms, ligatures, general punctuation and quotes, emoji, and whitespace of several kinds.
_RANGES = [(0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4E80),
           (0xAC00, 0xAC40), (0xFF01, 0xFF5E), (0xFB00, 0xFB06), (0x2000, 0x206F), (0x1F300, 0x1F64F),
           (0x2460, 0x24FF)]
_SPACES = " \t\n\u00a0\u3000"


def _random_strings(n: int, seed: int = 14) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 24)):
            if rng.random() < 0.15:
                chars.append(rng.choice(_SPACES))
            else:
                lo, hi = rng.choice(_RANGES)
                chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


RANDOM = _random_strings(400)


@pytest.fixture(scope="module")
def merges():
    return learn_merges(CORPUS, 120)


@pytest.fixture(scope="module")
def tok(merges, tmp_path_factory):
    return load_tokenizer(write_bpe_vocab(tmp_path_factory.mktemp("bpe") / "bpe_unicode.txt.gz", merges))


@pytest.fixture(scope="module")
def clip(merges):
    return CLIPSimpleTokenizer(merges)


@pytest.mark.parametrize("text", NAMED)
def test_named_unicode_texts_match_clip(tok, clip, text):
    assert tok.encode(text) == clip.encode(text)


def test_curly_quote_and_ligature_become_ascii(tok):
    assert tok.encode("a dog’s house") == tok.encode("a dog's house")
    assert tok.encode("ﬁeld of wheat") == tok.encode("field of wheat")
    assert tok.encode("ＲＯＡＤ") == tok.encode("road")


def test_random_unicode_strings_match_clip(tok, clip):
    mismatched = [t for t in RANDOM if tok.encode(t) != clip.encode(t)]
    assert not mismatched, f"{len(mismatched)} of {len(RANDOM)} differ, e.g. {mismatched[:5]!r}"
