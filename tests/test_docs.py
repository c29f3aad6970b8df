"""The documentation cannot rot: every code block in docs/ and README.md runs, outputs are checked.

Conventions for Markdown pages (docs/**/*.md and README.md):

* A ```python block is executed. The blocks of one page run in order, in one namespace, in a
  fresh interpreter and temporary working directory, with the numpy backend, seed 0, float32,
  grad mode on and single-threaded BLAS (``python tests/test_docs.py PAGE.md`` does the same).
* A ```python block followed by a line ``<!-- output -->`` and a ```text block: what the python
  block prints to stdout must equal the text block exactly. Regenerate these after a deliberate
  change with ``python tests/test_docs.py --update docs/PAGE.md`` and review the diff.
* A ```python-norun block is shown highlighted as Python but not executed (it needs the network,
  runs for minutes, or is another library's code). It must start with a comment saying why, and
  it must still compile.
* ``<!-- cli-help: train -->`` followed by a ```text block: the block must equal
  ``matgrad train --help`` at 100 columns (``<!-- cli-help: -->`` for ``matgrad --help``).
* Other info strings (text, bash, sh, console, ...) are not run; an unknown one is an error, so a
  typo such as ```py cannot silently skip a block.
* docs/index.md shows the README's main command and test command (the lines after
  ``<!-- main-command -->`` and ``<!-- test-command -->``) verbatim.

Also here: docs/snippets/test_my_layer.py (the example on the gradient-checking page) passes under
pytest, and ``mkdocs build --strict`` passes (skipped when MkDocs is not installed); the site it
builds (the ``built_site`` fixture in conftest.py) is what tests/test_docs_offline.py opens.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

RUN = "python"
NORUN = "python-norun"
NOT_RUN = {"text", "bash", "sh", "console", "shell", "toml", "yaml", "json", "dot", "diff", ""}
HELP_COLUMNS = "100"
SINGLE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
_SNIPPET = re.compile(r'^-{1,}8<-{1,}[ \t]+"(?P<path>[^"]+)"[ \t]*$')
_MARKER = re.compile(r"^[ \t]*<!--[ \t]*(?P<name>output|cli-help)(?::[ \t]*(?P<arg>[^>]*?))?[ \t]*-->[ \t]*$")


@dataclass
class Block:
    lang: str
    code: str  # dedented content, one "\n" after every line
    line: int  # 1-based line of the first content line in the page
    open_line: int  # 1-based line of the opening fence
    close_line: int  # 1-based line of the closing fence
    indent: str
    marker: tuple[str, str] | None = None  # ("output", "") or ("cli-help", "train")
    marker_after: int = -1  # 0-based index of the last non-blank line before the marker
    expected_output: Block | None = None  # for a python block: the text block checked against it
    source: Path | None = None  # a block that only includes a file (pymdownx.snippets): that file

    def compiled(self, page: Path) -> types.CodeType:
        """The code, compiled so that tracebacks point at the right file and line."""
        if self.source is not None:
            return compile(self.code, str(self.source), "exec")
        return compile("\n" * (self.line - 1) + self.code, str(page), "exec")


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page, with markers and output blocks attached."""
    lines = text.split("\n")
    blocks: list[Block] = []
    last_marker: tuple[tuple[str, str], int, int] | None = None  # (marker, its index, content before it)
    previous_content = -1  # index of the last non-blank line outside blocks
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if m is None:
            mk = _MARKER.match(line)
            if mk is not None:
                last_marker = ((mk["name"], (mk["arg"] or "").strip()), i, previous_content)
            if line.strip():
                previous_content = i
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        lang = m["info"].split()[0] if m["info"].split() else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            content = lines[j]
            body.append(content[len(indent) :] if content.startswith(indent) else content.lstrip())
            j += 1
        else:
            raise ValueError(f"line {i + 1}: a ``` block is never closed")
        marker = last_marker if last_marker is not None and last_marker[1] == previous_content else None
        code = "".join(b + "\n" for b in body)
        block = Block(lang, code, i + 2, i + 1, j + 1, indent)
        if marker is not None:
            block.marker, block.marker_after = marker[0], marker[2]
        snippet = _SNIPPET.match(body[0].strip()) if len(body) == 1 else None
        if snippet is not None:  # --8<-- "path" or "path:section": the file's content, as MkDocs shows it
            path, _, section = snippet["path"].partition(":")
            block.source = ROOT / path
            block.code = block.source.read_text(encoding="utf-8")
            if section:
                block.code = _section(block.code, section, path)
        blocks.append(block)
        previous_content = j
        last_marker = None
        i = j + 1
    for k, b in enumerate(blocks):
        if b.marker is not None and b.marker[0] == "output":
            prev = blocks[k - 1] if k > 0 else None
            if b.lang != "text" or prev is None or prev.lang != RUN or b.marker_after != prev.close_line - 1:
                raise ValueError(
                    f"line {b.open_line}: <!-- output --> must sit right between a ```python block and a ```text block"
                )
            prev.expected_output = b
    return blocks


def _section(text: str, name: str, path: str) -> str:
    """The lines between ``--8<-- [start:name]`` and ``--8<-- [end:name]`` (pymdownx.snippets), dedented."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip().endswith(f"--8<-- [start:{name}]")]
    ends = [i for i, line in enumerate(lines) if line.strip().endswith(f"--8<-- [end:{name}]")]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"{path}: section {name!r} needs one start and one end marker")
    return textwrap.dedent("".join(lines[starts[0] + 1 : ends[0]]))


def _pages_with_code() -> list[Path]:
    return [p for p in PAGES if any(b.lang in (RUN, NORUN) for b in parse(p.read_text(encoding="utf-8")))]


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@contextlib.contextmanager
def _fresh_matgrad_state() -> Iterator[None]:
    """numpy backend, seed 0, float32, grad mode on; the previous settings restored afterwards."""
    import matgrad as mg

    backend, dtype = mg.get_backend(), mg.get_default_dtype()
    mg.set_backend("numpy")
    mg.set_default_dtype("float32")
    mg.manual_seed(0)
    mg.set_grad_enabled(True)
    try:
        yield
    finally:
        mg.set_grad_enabled(True)
        mg.set_default_dtype(dtype)
        mg.set_backend(backend)
        mg.manual_seed(0)


class BlockFailed(AssertionError):
    pass


def run_page(page: Path, update: bool = False) -> tuple[int, int, dict[int, str]]:
    """Run every python block of ``page`` in order; returns (blocks run, outputs checked, outputs).

    The outputs dict maps the index of each python block that has an output block to what it
    printed. With ``update=False`` a mismatch raises ``BlockFailed`` with a diff.
    """
    text = page.read_text(encoding="utf-8")
    blocks = parse(text)
    name = "docs_page_" + re.sub(r"\W", "_", _page_id(page))
    module = types.ModuleType(name)
    module.__file__ = str(page)
    sys.modules[name] = module
    ran = checked = 0
    outputs: dict[int, str] = {}
    try:
        with _fresh_matgrad_state():
            for k, block in enumerate(blocks):
                if block.lang == NORUN:
                    block.compiled(page)
                    continue
                if block.lang != RUN:
                    continue
                code = block.compiled(page)
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    exec(code, module.__dict__)
                ran += 1
                if block.expected_output is not None:
                    outputs[k] = out.getvalue()
                    checked += 1
                    expected = block.expected_output.code
                    if not update and out.getvalue() != expected:
                        diff = "".join(
                            difflib.unified_diff(
                                expected.splitlines(keepends=True),
                                out.getvalue().splitlines(keepends=True),
                                f"{_page_id(page)}:{block.expected_output.line} (documented)",
                                f"{_page_id(page)}:{block.line} (printed now)",
                            )
                        )
                        raise BlockFailed(
                            f"the output of the block at {_page_id(page)}:{block.line} changed; if the change is "
                            f"intended, run `python tests/test_docs.py --update {_page_id(page)}`:\n{diff}"
                        )
    finally:
        sys.modules.pop(name, None)
    return ran, checked, outputs


def update_page(page: Path) -> int:
    """Rewrite the ```text output blocks of ``page`` with what its python blocks print now."""
    text = page.read_text(encoding="utf-8")
    blocks = parse(text)
    _, _, outputs = run_page(page, update=True)
    lines = text.split("\n")
    targets: list[tuple[Block, str]] = []
    for k, printed in outputs.items():
        target = blocks[k].expected_output
        assert target is not None
        targets.append((target, printed))
    for b in blocks:
        if b.marker is not None and b.marker[0] == "cli-help":
            targets.append((b, cli_help_text(b.marker[1])))
    changed = 0
    for target, content in sorted(targets, key=lambda tc: tc[0].open_line, reverse=True):
        new = [target.indent + ln if ln else "" for ln in content.rstrip("\n").split("\n")]
        old = lines[target.open_line : target.close_line - 1]
        if new != old:
            lines[target.open_line : target.close_line - 1] = new
            changed += 1
    page.write_text("\n".join(lines), encoding="utf-8")
    return changed


# -- tests ----------------------------------------------------------------------------------------


def test_parser_conventions() -> None:
    page = (
        "```python\nprint(1)\n```\n\n<!-- output -->\n```text\n1\n```\n\n"
        '=== "tab"\n\n    ```python-norun\n    # not run: an example\n    x = 1\n    ```\n\n'
        "<!-- cli-help: info -->\n```text\n```\n"
    )
    run, output, norun, cli = parse(page)
    assert (run.lang, run.code, run.line) == ("python", "print(1)\n", 2)
    assert run.expected_output is output and output.code == "1\n"
    assert norun.lang == NORUN and norun.code == "# not run: an example\nx = 1\n" and norun.indent == "    "
    assert cli.marker == ("cli-help", "info") and cli.code == ""
    with pytest.raises(ValueError, match="right between"):
        parse("```python\nprint(1)\n```\n\nprose\n\n<!-- output -->\n```text\n1\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        parse("```python\nprint(1)\n")


def test_pages_have_code() -> None:
    pages = _pages_with_code()
    assert ROOT / "README.md" in pages
    assert len(pages) >= 10, [_page_id(p) for p in pages]


def _readme_command(marker: str) -> str | None:
    """The first line of the code block after ``<!-- marker -->`` in README.md (as .ci/run reads it)."""
    m = re.search(rf"<!-- {marker} -->\s*```\w*\n(.+?)\n", (ROOT / "README.md").read_text(encoding="utf-8"))
    return m.group(1).strip() if m else None


@pytest.mark.parametrize("marker", ["main-command", "test-command"])
def test_getting_started_quotes_the_readme_commands(marker: str) -> None:
    command = _readme_command(marker)
    if command is None:
        pytest.skip(f"README.md has no <!-- {marker} --> block")
    assert command in (DOCS / "index.md").read_text(encoding="utf-8"), (
        f"docs/index.md should show the README's {marker}: {command}"
    )


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_info_strings_are_known(page: Path) -> None:
    for b in parse(page.read_text(encoding="utf-8")):
        assert b.lang in {RUN, NORUN} | NOT_RUN, (
            f"{_page_id(page)}:{b.open_line}: unknown info string ```{b.lang}; use ```python (run), "
            f"```python-norun (not run) or one of {sorted(NOT_RUN - {''})}"
        )
        if b.lang == NORUN and b.source is None:  # an included file is code of the project, shown as it is
            first = next((ln for ln in b.code.splitlines() if ln.strip()), "")
            assert first.lstrip().startswith("#"), (
                f"{_page_id(page)}:{b.line}: a ```python-norun block starts with a comment saying why it is not run"
            )


# Pages whose code is known to fail, with the reason. strict: once a page is fixed, its xfail
# "passes unexpectedly", which fails the suite as a reminder to delete the entry here.
KNOWN_BROKEN: dict[str, str] = {}


def _page_param(page: Path) -> Any:
    reason = KNOWN_BROKEN.get(_page_id(page))
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    return pytest.param(page, id=_page_id(page), marks=marks)


@pytest.mark.parametrize("page", [_page_param(p) for p in _pages_with_code()])
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    # A fresh interpreter per page: no state leaks between pages, and BLAS runs on one thread,
    # which makes float32 products reproducible and keeps a loaded machine from thrashing.
    env = {**os.environ, **SINGLE_THREAD, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MATGRAD_BACKEND", None)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(page)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(result.stderr + result.stdout, pytrace=False)


def cli_help_text(command: str) -> str:
    """``$ matgrad COMMAND --help`` and what it prints at 100 columns."""
    from matgrad.cli import main

    out = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([*command.split(), "--help"])
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return " ".join(["$ matgrad", *command.split(), "--help"]) + "\n" + out.getvalue()


def _cli_help_blocks() -> list[tuple[Path, Block]]:
    found = []
    for page in PAGES:
        for b in parse(page.read_text(encoding="utf-8")):
            if b.marker is not None and b.marker[0] == "cli-help":
                found.append((page, b))
    return found


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="argparse lays out help differently from Python 3.13")
@pytest.mark.parametrize(
    ("page", "block"),
    _cli_help_blocks(),
    ids=[f"matgrad {b.marker[1]}".strip() if b.marker else "" for _, b in _cli_help_blocks()],
)
def test_cli_help_is_current(page: Path, block: Block) -> None:
    assert block.marker is not None
    assert block.lang == "text"
    command = block.marker[1]
    assert block.code == cli_help_text(command), (
        f"{_page_id(page)}:{block.line}: `matgrad {command} --help` changed; "
        f"run `python tests/test_docs.py --update {_page_id(page)}`"
    )


def test_cli_reference_covers_every_command() -> None:
    documented = {b.marker[1] for _, b in _cli_help_blocks() if b.marker is not None}
    assert documented >= {"", "train", "eval", "graph", "info"}


@pytest.mark.parametrize("snippet", sorted((DOCS / "snippets").glob("test_*.py")), ids=lambda p: p.name)
def test_snippet_test_file_passes(snippet: Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MATGRAD_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", str(snippet)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mkdocs_build_strict(built_site: Path) -> None:
    # The build itself (mkdocs build --strict, once per session) is the conftest fixture; it
    # fails with MkDocs' output on any warning and skips when MkDocs is not installed.
    assert (built_site / "index.html").is_file()
    assert (built_site / "backprop" / "index.html").is_file()


# -- python tests/test_docs.py [--update] [PAGE ...] ----------------------------------------------


def _main(argv: list[str]) -> int:
    for key, value in SINGLE_THREAD.items():  # before NumPy is imported
        os.environ.setdefault(key, value)
    update = "--update" in argv
    names = [a for a in argv if a != "--update"]
    pages = [Path(n).resolve() for n in names] or _pages_with_code()
    total_ran = total_checked = 0
    import tempfile
    import traceback

    for page in pages:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                if update:
                    changed = update_page(page)
                    print(f"{_page_id(page)}: {changed} output block(s) rewritten")
                ran, checked, _ = run_page(page)
            except BlockFailed as exc:
                print(exc, file=sys.stderr)
                return 1
            except Exception:
                print(f"a code block of {_page_id(page)} failed:\n{traceback.format_exc()}", file=sys.stderr)
                return 1
            finally:
                os.chdir(cwd)
        total_ran += ran
        total_checked += checked
        print(f"{_page_id(page)}: {ran} blocks run, {checked} outputs checked")
    print(f"{len(pages)} pages, {total_ran} blocks run, {total_checked} outputs checked")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
