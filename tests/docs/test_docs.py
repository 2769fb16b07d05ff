"""Every command and code block of README.md and docs/*.md runs, here, on generated data, so the docs cannot
drift from the code.

How (see :mod:`tests.docs.blocks` for the block rules and the substitution table):

- moto's S3 server (the session's ``s3_server``) holds a bucket ``lake`` with the data the docs name
  (:mod:`tests.docs.docs_data`); ``AWS_ENDPOINT_URL`` and dummy credentials in the environment make s3fs, GDAL
  and the ``dinoseg`` command reach it with the docs' plain ``s3://lake/...`` URLs, as a user's would reach AWS;
- one Prefect server (``prefect server start``) serves every command through ``PREFECT_API_URL``, as the docs
  recommend, instead of a temporary server per command;
- each page starts from a fresh bucket and a fresh working folder; its blocks run in page order, shell blocks in
  ``bash`` and Python blocks in one kernel per page (:mod:`tests.docs.kernel`), like a notebook. Running one
  block alone (``-k``) first runs the blocks above it on its page.

The cheap checks (README length, links, markers) are not slow and run in ``make test-fast`` too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs import blocks as docs
from tests.docs.blocks import REPO, Block

README_MAX_LINES = 250
#: Blocks that do not run here, each with its reason in the page. More than this means the docs stopped being
#: tested; raise it only with a reason that a reviewer accepts.
MAX_SKIPPED = 8
BLOCK_TIMEOUT_S = 300
BIN = REPO / ".venv" / "bin"

BLOCKS = docs.all_blocks()
RUNNABLE = [b for b in BLOCKS if b.action in ("run", "exit", "write")]


# ------------------------------------------------------------------------------------------ cheap structure checks

def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference material to docs/"


@pytest.mark.parametrize("page", docs.PAGES)
def test_links_resolve(page):
    """Every relative link of a page points at a file or folder of the repository."""
    text = (REPO / page).read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = (REPO / page).parent / target.split("#")[0]
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page}: links to missing files: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    unlinked = [page for page in docs.PAGES[1:] if f"({page})" not in readme]
    assert not unlinked, f"pages nobody finds from README.md: {unlinked}"


def _options_documented():
    """(page, option names the page must show, how): every field of the configs and of RunOptions."""
    import dataclasses

    from dinoseg_core.config import InsidConfig, SceneConfig
    from dinoseg_core.ovseg import OvsegConfig, TrainConfig
    from tasks.options import RunOptions

    def flags(config, prefix=""):  # a field's "flag" metadata names its option whatever the prefix
        return [f"--{f.metadata.get('flag') or prefix + f.name.replace('_', '-')}" for f in dataclasses.fields(config)]

    return [
        ("docs/method.md", flags(InsidConfig)),
        ("docs/scenes.md", flags(SceneConfig, "scene-")),
        ("docs/open-vocabulary.md", flags(OvsegConfig) + flags(TrainConfig)),
        ("docs/deployments.md", [f"`{name}`" for name in RunOptions.model_fields]),
    ]


def test_every_option_is_documented():
    """A config field or run option added without a line in its page fails here (the tables list them all; a
    ``--head-*`` family stands for SegHeadConfig's fields)."""
    missing = []
    for page, names in _options_documented():
        text = (REPO / page).read_text()
        missing += [f"{page}: {name}" for name in names if not re.search(re.escape(name) + r"(?![\w-])", text)]
    assert not missing, "options missing from the docs:\n" + "\n".join(missing)


def _table_defaults(page: str) -> dict[str, str]:
    """``{name: default cell}`` of every table row of ``page`` that starts with one backticked option name."""
    rows = re.findall(r"^\| `([\w-]+)` \| ([^|]+?) \|", (REPO / page).read_text(), flags=re.MULTILINE)
    found: dict[str, str] = {}
    for name, cell in rows:  # the first row of a name is its definition (later tables may reuse it as a header)
        found.setdefault(name.lstrip("-").replace("-", "_"), cell.strip().strip("`"))
    return found


def _same_default(cell: str, value) -> bool | None:
    """Whether a table's default cell states ``value``; None when the cell is prose (not compared)."""
    if value is None:
        return True if cell == "none" else None  # None often stands for a computed default, said in words
    if isinstance(value, bool):
        return cell in (("on", "true") if value else ("off", "false"))
    if isinstance(value, (int, float)):
        try:
            return float(cell) == float(value)
        except ValueError:
            return None
    if isinstance(value, str) and " " not in cell:
        return cell == value
    return None


def test_documented_defaults_are_the_code_defaults():
    """The defaults in the option tables are the configs' own (numbers the papers fix are written once, in code;
    a table that disagrees is wrong)."""
    import dataclasses

    from dinoseg_core.config import InsidConfig, SceneConfig
    from tasks.options import RunOptions

    defaults = [("docs/method.md", {f.name: f.default for f in dataclasses.fields(InsidConfig)}),
                ("docs/scenes.md", {(f.metadata.get("flag") or f"scene-{f.name}").replace("-", "_"): f.default
                                    for f in dataclasses.fields(SceneConfig)}),
                ("docs/deployments.md", {name: f.default for name, f in RunOptions.model_fields.items()})]
    wrong, compared = [], 0
    for page, values in defaults:
        for name, cell in _table_defaults(page).items():
            same = _same_default(cell, values[name]) if name in values else None
            compared += same is not None
            if same is False:
                wrong.append(f"{page}: {name} is documented as {cell!r}, the code says {values[name]!r}")
    assert not wrong, "\n".join(wrong)
    assert compared >= 14, f"only {compared} defaults compared: did the tables change shape?"


def test_blocks_are_marked_and_skips_are_few():
    """Parsing already refused unknown languages, stray markers and skips without a reason."""
    skipped = [b for b in BLOCKS if b.action == "skip"]
    assert RUNNABLE, "no runnable code block found"
    assert len(skipped) <= MAX_SKIPPED, "too many skipped blocks:\n" + "\n".join(
        f"{b.id}: {b.reason}" for b in skipped)


def test_parser_rules():
    """The rules of the block format, on small pages (a rule that silently stopped applying would let docs drift)."""
    page = "README.md"
    good = ("text\n<!-- docs-test: skip (starts a server) -->\n```bash\nprefect server start\n```\n"
            "<!-- docs-test: write s3://lake/refs.yaml -->\n\n```yaml\nversion: 1\n```\n```console\n$ echo a \\\n"
            "  b\na b\n```\n")
    parsed = docs.parse_page(page, good)
    assert [(b.lang, b.action, b.arg, b.reason) for b in parsed] == [
        ("bash", "skip", "", "starts a server"), ("yaml", "write", "s3://lake/refs.yaml", ""),
        ("console", "run", "", "")]
    assert docs.console_commands(parsed[2].text) == [("echo a \\\n  b", ["a b"])]
    for bad in ("<!-- docs-test: skip -->\n```bash\nx\n```\n", "```yaml\na: 1\n```\n", "```\nx\n```\n",
                "<!-- docs-test: skip (why) -->\ntext\n```bash\nx\n```\n", "```bash\nx\n",
                "<!-- docs-test: exit 1 -->\n```bash\nfalse\n```\n"):
        with pytest.raises(docs.DocsFormatError):
            docs.parse_page(page, bad)
    assert docs.missing_output(["labelled 2, skipped ... failed 0"], "x\nlabelled 2, skipped 1, failed 0\n") == []
    assert docs.missing_output(["b", "a"], "a\nb\n") == ["a"]
    assert docs.adapt("--backbone dinov3-vitl16-sat493m --bpe s3://m/bpe.txt.gz") == "--backbone random:tiny@0"
    assert docs.adapt('load_dinotxt("s3://m/dinov3_vitl16_dinotxt_vision_head_and_text_encoder.pth", '
                      'bpe="s3://m/bpe.txt.gz")') == 'load_dinotxt("random:tiny@0", bpe=None)'
    assert docs.adapt("make demo  # x") == "make --old-file=.venv/.installed demo  # x"


# ------------------------------------------------------------------------------------------------ running blocks

@pytest.fixture(scope="module")
def lake_files(tmp_path_factory) -> Path:
    from tests.docs.docs_data import write_lake

    return write_lake(tmp_path_factory.mktemp("lake"))


@pytest.fixture(scope="module")
def docs_env(s3_server, prefect_server, tmp_path_factory) -> dict[str, str]:
    """The environment of every block: this one's without AWS_*/PREFECT_* settings that could point elsewhere,
    plus the test's S3 endpoint, its Prefect server, the checkout's .venv first on PATH and a private cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update({k: v for k, v in prefect_server["env"].items() if k.startswith("PREFECT_")})
    env.update(
        AWS_ENDPOINT_URL=s3_server["endpoint_url"], AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DINOSEG_CACHE_DIR=str(tmp_path_factory.mktemp("dinoseg-cache")), HF_HUB_OFFLINE="1",
        PREFECT_LOGGING_LEVEL="WARNING", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        DINOSEG_DEMO_OUT=str(tmp_path_factory.mktemp("demo-output")),
    )
    env.pop("PWD", None)
    return env


class PageRun:
    """The state of one page: its working folder, its Python kernel, and how far its blocks have run."""

    def __init__(self, page: str, workdir: Path, env: dict[str, str]):
        self.page, self.workdir, self.env = page, workdir, env
        self.kernel: subprocess.Popen | None = None
        self.kernel_log = open(workdir / "kernel.log", "ab")  # noqa: SIM115 - open for the page's lifetime
        self.done: set[int] = set()

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.stdin.close()
            try:
                self.kernel.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kernel.kill()
            self.kernel = None
        self.kernel_log.close()

    def run(self, block: Block) -> None:
        """Run ``block``, after any earlier block of the page that has not run; fails the test on any failure."""
        for earlier in [b for b in RUNNABLE if b.page == self.page and b.line < block.line]:
            if earlier.line not in self.done:
                self._run(earlier, f" (run first, because {block.id} comes after it)")
        self._run(block, "")

    def _run(self, block: Block, note: str) -> None:
        self.done.add(block.line)
        if block.action == "write":
            self._write(block)
        elif block.lang == "python":
            self._python(block, note)
        elif block.lang == "console":
            for command, expected in docs.console_commands(block.text):
                done = self._shell(block, command, note)
                missing = docs.missing_output(expected, done.stdout)
                assert not missing, (f"{block.id}{note}: `{command}` did not print {missing}; it printed:\n"
                                     f"{done.stdout[-4000:]}")
        else:
            self._shell(block, block.text, note)

    def _write(self, block: Block) -> None:
        from dinoseg_core.io import storage

        url = block.arg if "://" in block.arg else str(self.workdir / block.arg)
        storage.write_bytes(url, docs.adapt(block.text).encode(), self._storage_options())

    def _storage_options(self) -> dict:
        return {"key": "testing", "secret": "testing", "endpoint_url": self.env["AWS_ENDPOINT_URL"]}

    def _shell(self, block: Block, command: str, note: str) -> subprocess.CompletedProcess:
        script = docs.adapt(command)
        # `make` targets live in the checkout's Makefile; everything else runs where the page's files are.
        cwd = REPO if script.lstrip().startswith("make ") else self.workdir
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], check=False, cwd=cwd, env=self.env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT_S)
        want = int(block.arg) if block.action == "exit" else 0
        assert done.returncode == want, (f"{block.id}{note} exited {done.returncode} (want {want}):\n$ {script}\n"
                                         f"{done.stdout[-6000:]}")
        print(done.stdout[-6000:], file=sys.stderr)  # shown with -rP
        return done

    def _python(self, block: Block, note: str) -> None:
        if self.kernel is None:
            self.kernel = subprocess.Popen(
                [str(BIN / "python"), str(REPO / "tests" / "docs" / "kernel.py")], cwd=self.workdir, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.kernel_log,
                text=True, bufsize=1)
        self.kernel.stdin.write(json.dumps({"code": docs.adapt(block.text), "name": block.id}) + "\n")
        self.kernel.stdin.flush()
        reply = self.kernel.stdout.readline()
        if not reply:
            log = (self.workdir / "kernel.log").read_text(errors="replace")[-4000:]
            pytest.fail(f"{block.id}{note}: the Python kernel died:\n{log}")
        reply = json.loads(reply)
        assert reply["ok"], f"{block.id}{note} raised:\n{reply['error']}\noutput:\n{reply['output'][-4000:]}"
        print(reply["output"], file=sys.stderr)  # shown with -rP, to read what a block printed


@pytest.fixture(scope="module")
def pages(lake_files, docs_env, s3_server, tmp_path_factory):
    """``pages(page) -> PageRun``; switching to another page closes the previous one and refills the bucket."""
    from tests.docs.docs_data import upload

    current: dict[str, PageRun] = {}

    def get(page: str) -> PageRun:
        if page not in current:
            for old in current.values():
                old.close()
            current.clear()
            upload(lake_files, s3_server["client"])
            workdir = tmp_path_factory.mktemp(re.sub(r"\W", "-", page))
            current[page] = PageRun(page, workdir, docs_env)
        return current[page]

    yield get
    for run in current.values():
        run.close()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(BLOCK_TIMEOUT_S * 3)
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_block(block, pages):
    started = time.monotonic()
    pages(block.page).run(block)
    print(f"{block.id}: {time.monotonic() - started:.1f} s", file=sys.stderr)
