"""Code blocks of the Markdown docs: extraction, the markers that change how a block is tested, and the
substitutions that make a block runnable here.

A fenced block (```lang at the start of a line) is tested according to its language:

- ``bash`` / ``sh``: run with ``bash -e -o pipefail``; it must exit 0;
- ``console``: ``$ command`` lines (a trailing ``\\`` continues a command on the next line) are run one by one;
  the other lines are the output the command must print (stdout and stderr together): each such line must match
  a line of the output, in order; ``...`` in an expected line matches anything;
- ``python``: run in a kernel that keeps one namespace per page, so blocks build on the blocks above (a notebook);
- ``yaml`` / ``json``: data, not code: it needs a ``write`` marker (below), which puts it where the next blocks
  read it, or a ``skip`` marker;
- ``text``: shown, never run (layouts, sample output).

Markers are HTML comments (invisible on GitHub) on the last non-blank line before a fence:

- ``<!-- docs-test: skip (why) -->``: not run; the reason is listed in the test output. Keep these rare;
- ``<!-- docs-test: write URL -->``: write the block's text to ``URL`` (a path relative to the page's working
  folder, or ``s3://lake/...``);
- ``<!-- docs-test: exit N (why) -->``: the block must exit N (a command whose point is its failure).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: README first, then every page under docs/ (a page added there is tested without being listed here).
PAGES = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]

RUN_LANGS = ("bash", "sh", "console", "python")
DATA_LANGS = ("yaml", "json")
SHOW_LANGS = ("text",)

_FENCE = re.compile(r"^(`{3,})([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<action>\w+)\s*(?P<arg>[^(\s]*)\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block. ``line`` is the 1-based line of its opening fence; ``action`` is ``run``, ``skip``,
    ``write``, ``exit`` or ``show``; ``arg`` the marker's argument (URL for write, code for exit)."""

    page: str
    line: int
    lang: str
    text: str
    action: str = "run"
    arg: str = ""
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


class DocsFormatError(ValueError):
    """A page breaks the rules above (unknown language, a marker without a block, a skip without a reason...)."""


def parse_page(page: str, text: str | None = None) -> list[Block]:
    """Every fenced block of ``page`` (a path relative to the repository) in page order, with its marker."""
    lines = (REPO / page).read_text().splitlines() if text is None else text.splitlines()
    blocks, index, pending = [], 0, None
    while index < len(lines):
        line = lines[index]
        marker = _MARKER.match(line)
        if marker:
            if pending is not None:
                raise DocsFormatError(f"{page}:{pending[0]}: docs-test marker not followed by a code block")
            pending = (index + 1, marker)
            index += 1
            continue
        if line.startswith("<!--") and "docs-test" in line:
            raise DocsFormatError(f"{page}:{index + 1}: unreadable marker {line!r}; write e.g. "
                                  "'<!-- docs-test: skip (why) -->'")
        fence = _FENCE.match(line)
        if not fence:
            if line.strip() and pending is not None:
                raise DocsFormatError(f"{page}:{pending[0]}: docs-test marker not followed by a code block")
            index += 1
            continue
        ticks, lang = fence.group(1), fence.group(2).lower()
        end = next((j for j in range(index + 1, len(lines)) if lines[j].rstrip() == ticks), None)
        if end is None:
            raise DocsFormatError(f"{page}:{index + 1}: code block never closed")
        blocks.append(_block(page, index + 1, lang, "\n".join(lines[index + 1:end]) + "\n", pending))
        pending, index = None, end + 1
    if pending is not None:
        raise DocsFormatError(f"{page}:{pending[0]}: docs-test marker not followed by a code block")
    return blocks


def _block(page: str, line: int, lang: str, text: str, pending) -> Block:
    where = f"{page}:{line}"
    if lang not in RUN_LANGS + DATA_LANGS + SHOW_LANGS:
        raise DocsFormatError(f"{where}: code block language {lang or '(none)'!r}; use one of "
                              f"{RUN_LANGS + DATA_LANGS + SHOW_LANGS} (text for anything that is not run)")
    if pending is None:
        if lang in DATA_LANGS:
            raise DocsFormatError(f"{where}: a {lang} block needs '<!-- docs-test: write URL -->' (where the "
                                  "examples read it) or '<!-- docs-test: skip (why) -->'")
        return Block(page, line, lang, text, "show" if lang in SHOW_LANGS else "run")
    action, arg, reason = pending[1].group("action"), pending[1].group("arg"), (pending[1].group("reason") or "")
    if lang in SHOW_LANGS:
        raise DocsFormatError(f"{where}: a text block is never run; remove its marker")
    if action == "skip" and not reason.strip():
        raise DocsFormatError(f"{where}: a skipped block says why: '<!-- docs-test: skip (why) -->'")
    if action == "write" and (not arg or lang not in DATA_LANGS):
        raise DocsFormatError(f"{where}: 'write URL' is for yaml/json blocks and needs the URL")
    if action == "exit" and (not arg.isdigit() or lang == "python" or not reason.strip()):
        raise DocsFormatError(f"{where}: 'exit N (why)' is for shell blocks, with the code and the reason")
    if action not in ("skip", "write", "exit"):
        raise DocsFormatError(f"{where}: unknown docs-test action {action!r} (skip, write or exit)")
    return Block(page, line, lang, text, action, arg, reason.strip())


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in parse_page(page)]


# ----------------------------------------------------------------------------------------------- substitutions

#: Model weights cannot be downloaded here (no network, and gated on the Hub), and real ViT-L weights would take
#: minutes per block on 2 CPU cores. So every model the docs name becomes a seeded random one of the same kind,
#: and the method runs at test sizes. A random backbone's features are compressed (mean patch cosine ~0.66), so
#: the clustering cut is the one the tests and the demo use (tau 0.9) instead of the paper's 0.6. Each entry is
#: (regex, replacement), applied in order to every shell command and Python block, never to prose.
SUBSTITUTIONS: list[tuple[str, str]] = [
    # `make` installs into .venv when pyproject.toml or requirements.lock is newer than its stamp: the test uses the
    # .venv it runs in (others may be using it too) and never reinstalls it.
    (r"(?m)^make (?=\w)", "make --old-file=.venv/.installed "),
    # dino.txt's towers and CLIP's vocabulary: the 2-block random towers need no vocabulary (byte-level).
    (r"[^\s\"']*dinov3_vitl16_dinotxt_vision_head_and_text_encoder[^\s\"']*\.pth", "random:tiny@0"),
    (r"\s--bpe\s+\S+", ""),
    (r"bpe=\"[^\"]*\"", "bpe=None"),
    # Every DINOv3 preset (LVD-1689M or SAT-493M) -> the 2-block, 64-wide random backbone (fits the tiny towers).
    (r"(?<![\w:/-])dinov3-vit\w+(?:-sat493m)?(?![\w-])", "random:tiny@0"),
    # Method sizes: one 128-px input per tile; scene windows of 128 px need an overlap below 128.
    (r"\bdinoseg (segment|label)(?= )", r"dinoseg \1 --image-size 128 --tau 0.9"),
    (r"\bdinoseg (basis|correspond)(?= )", r"dinoseg \1 --image-size 128"),
    # Quality commands: 128-px inputs, a handful of episodes (the random backbone's tau for evaluate, see above).
    (r"\bdinoseg evaluate(?= )", "dinoseg evaluate --image-size 128 --tau 0.9"),
    (r"\bdinoseg calibrate(?= )", "dinoseg calibrate --image-size 128"),
    (r"--episodes \d+", "--episodes 6"),
    (r"(--bands [\d,]+)", r"\1 --scene-overlap 32"),
    (r"(--stac-asset [\w,]+)", r"\1 --scene-overlap 32"),
    (r"\bInsidConfig\(\)", "InsidConfig(image_size=128, tau=0.9)"),
    (r"\{image_size: 1024\}", "{image_size: 128, tau: 0.9}"),
    # Open vocabulary: one 64-px window and one template per class, a toy head and a few training steps.
    (r"\bdinoseg (label-text|eval-ovss)(?= )",
     r"dinoseg \1 --short-side 64 --window 64 --stride 32 --templates 'a photo of a {}.'"),
    (r"\bdinoseg train-ovss(?= )",
     ("dinoseg train-ovss --short-side 64 --crop 64 --batch-size 2 --checkpoint-every 2 "
      "--lr 0.01 --schedule constant --templates 'a photo of a {}.' --head-hidden 16 --head-early-blocks 0 "
      "--head-spatial-blocks 1 --head-class-blocks 1 --head-class-heads 2 --head-decoder-channels 8")),
    (r"--steps \d+", "--steps 4"),
    (r"\bOvsegConfig\(", "OvsegConfig(short_side=64, window=64, stride=32, templates=('a photo of a {}.',), "),
]


def adapt(text: str) -> str:
    """``text`` with every :data:`SUBSTITUTIONS` entry applied."""
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return text


# ------------------------------------------------------------------------------------------------------ console

def console_commands(text: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of a console block."""
    commands: list[tuple[str, list[str]]] = []
    continuing = False
    for line in text.splitlines():
        if continuing:
            commands[-1] = (commands[-1][0] + "\n" + line, commands[-1][1])
        elif line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands and line.strip():
            commands[-1][1].append(line.strip())
        elif line.strip():
            raise DocsFormatError(f"console block output before any '$ ' command: {line!r}")
        continuing = line.endswith("\\") and (continuing or line.startswith("$ "))
    return commands


def missing_output(expected: list[str], output: str) -> list[str]:
    """The expected lines not found in ``output`` in order (``...`` matches anything); empty when all match."""
    lines = [line.strip() for line in output.splitlines()]
    position, missing = 0, []
    for want in expected:
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        hit = next((i for i in range(position, len(lines)) if pattern.fullmatch(lines[i])), None)
        if hit is None:
            missing.append(want)
        else:
            position = hit + 1
    return missing
