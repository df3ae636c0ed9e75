"""The documentation stays true to the code (README.md, CONTRIBUTING.md, docs/*.md; no paddle needed).

- every ```python block compiles and passes `ruff check` (a fragment may be marked ``` { .python .skip } ```);
- every `paddle-qwen2 SUBCOMMAND ...` line of a bash / console block names a real subcommand and only options of
  its parser;
- docs/cli.md lists exactly the options of each subcommand's `--help`;
- README.md is short, every relative link resolves, every benchmark result has a table.
`mkdocs build --strict` itself runs in `make docs`, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_qwen2.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 210

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
PYTHON_INFO = "python"
SKIP_INFO = "{ .python .skip }"
SHELL_INFOS = {"bash", "console", "sh", "shell"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def code_blocks(path: Path) -> list[tuple[str, str, int]]:
    """(info string, body, line number of the opening fence) of every fenced block of a markdown file."""
    text = path.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        indent = len(m.group("indent"))
        body = "".join(line[indent:] for line in m.group("body").splitlines(keepends=True))
        blocks.append((m.group("info").strip(), body, text.count("\n", 0, m.start()) + 1))
    return blocks


def blocks_of(infos: set[str]) -> list[tuple[Path, str, int]]:
    return [(path, body, line) for path in DOC_FILES for info, body, line in code_blocks(path) if info in infos]


def block_id(block: tuple[Path, str, int]) -> str:
    return f"{block[0].relative_to(ROOT)}:{block[2]}"


PYTHON_BLOCKS = blocks_of({PYTHON_INFO})
SHELL_BLOCKS = blocks_of(SHELL_INFOS)


def test_doc_files_found():
    assert (DOCS / "index.md") in DOC_FILES and (DOCS / "cli.md") in DOC_FILES
    assert len(PYTHON_BLOCKS) >= 5 and len(SHELL_BLOCKS) >= 10


def test_code_blocks_use_known_info_strings():
    """A python block with another info string (`py`, `python3`) would escape the checks below."""
    for path in DOC_FILES:
        for info, _, line in code_blocks(path):
            if "py" in info.lower():
                assert info in (PYTHON_INFO, SKIP_INFO), f"{path.relative_to(ROOT)}:{line}: info string {info!r}"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=block_id)
def test_python_block_compiles(block):
    path, body, line = block
    compile(body, f"{path.relative_to(ROOT)}:{line}", "exec")


def test_python_blocks_pass_ruff(tmp_path):
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed (requirements-test.txt)"
    names = {}
    for path, body, line in PYTHON_BLOCKS:
        name = f"{path.stem.replace('-', '_')}_line{line}.py"
        (tmp_path / name).write_text(body)
        names[name] = f"{path.relative_to(ROOT)}:{line}"
    result = subprocess.run(
        [ruff, "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), *sorted(names)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    report = result.stdout + result.stderr
    for name, where in names.items():
        report = report.replace(name, f"{name} ({where})")
    assert result.returncode == 0, report


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subparsers) == 1
    return dict(subparsers[0].choices)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def command_lines(body: str) -> list[list[str]]:
    """The tokens after `paddle-qwen2` / `python -m paddle_qwen2` on each (continued) line of a shell block."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        tokens = shlex.split(line, comments=True)
        for i, token in enumerate(tokens):
            if token == "paddle-qwen2" or (token == "paddle_qwen2" and i > 0 and tokens[i - 1] == "-m"):
                rest = tokens[i + 1 :]
                for j, t in enumerate(rest):
                    if t in {"|", "&&", "||", ";", ">", "2>&1"}:
                        rest = rest[:j]
                        break
                commands.append(rest)
    return commands


COMMANDS = [(path, line, tokens) for path, body, line in SHELL_BLOCKS for tokens in command_lines(body)]


def test_command_lines_found():
    assert {tokens[0] for _, _, tokens in COMMANDS if tokens} >= set(subcommand_parsers())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c[0].relative_to(ROOT)}:{c[1]}:{' '.join(c[2][:2])}")
def test_command_line_uses_real_options(command):
    path, line, tokens = command
    where = f"{path.relative_to(ROOT)}:{line}: paddle-qwen2 {' '.join(tokens)}"
    parsers = subcommand_parsers()
    if not tokens or tokens[0].startswith("-"):
        allowed = option_strings(build_parser())
    else:
        assert tokens[0] in parsers, f"{where}: no subcommand {tokens[0]!r} (known: {sorted(parsers)})"
        allowed = option_strings(parsers[tokens[0]])
    used = {t.split("=", 1)[0] for t in tokens if t.startswith("-") and t != "-"}
    assert used <= allowed, f"{where}: unknown option(s) {sorted(used - allowed)}"


def help_options(subcommand: str) -> set[str]:
    """The options `python -m paddle_qwen2 SUBCOMMAND --help` lists, without -h / --help."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    text = subprocess.run(
        [sys.executable, "-m", "paddle_qwen2", subcommand, "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    ).stdout
    section = text.split("\noptions:\n", 1)[1]
    options = set()
    for line in section.splitlines():
        m = re.match(r"^  (-[^ ].*?)(?:  |$)", line)
        if m:
            options |= {part.split()[0] for part in m.group(1).split(", ")}
    return options - {"-h", "--help"}


def reference_options() -> dict[str, set[str]]:
    """docs/cli.md: subcommand -> the options in the first column of its section's table."""
    sections = re.split(r"^## ", (DOCS / "cli.md").read_text(), flags=re.M)[1:]
    pages = {}
    for section in sections:
        name, _, body = section.partition("\n")
        cells = [row.split("|")[1] for row in body.splitlines() if row.startswith("| `")]
        pages[name.strip()] = {m for cell in cells for m in re.findall(r"(?<![\w-])--?[a-z][\w-]*", cell)}
    return pages


def test_cli_reference_has_every_subcommand():
    assert set(reference_options()) == set(subcommand_parsers())


@pytest.mark.parametrize("subcommand", sorted(subcommand_parsers()))
def test_cli_reference_matches_help(subcommand):
    documented, listed = reference_options()[subcommand], help_options(subcommand)
    assert listed, f"no options parsed from `paddle-qwen2 {subcommand} --help`"
    assert documented - listed == set(), f"docs/cli.md `{subcommand}` documents options --help lacks"
    assert listed - documented == set(), f"docs/cli.md `{subcommand}` lacks options of --help"


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move text to docs/"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        assert (path.parent / file).exists(), f"{path.relative_to(ROOT)}: link to {target} (no such file)"


def test_every_benchmark_result_has_a_table():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    page = (DOCS / "benchmarks.md").read_text()
    files = tables.result_files()
    assert files
    for path in files:
        kind = tables.kind_of(path)
        assert f"<!-- benchmark-table: {kind} -->" in page, f"docs/benchmarks.md has no table marker for {path.name}"
        rendered = tables.render(path)
        assert json.loads(path.read_text())["date"] in rendered and "| --- |" in rendered, path.name


def test_contributing_tree_names_every_module():
    """CONTRIBUTING.md's "Where things live" names each module of the package's subpackages."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    modules = sorted(
        f"{path.parent.name}/{path.name}"
        for path in (ROOT / "paddle_qwen2").glob("*/*.py")
        if path.name != "__init__.py" and path.parent.name != "__pycache__"
    )
    missing = [m for m in modules if not re.search(rf"\b{re.escape(m.split('/')[1])}\b", text)]
    assert not missing, f"CONTRIBUTING.md's tree does not name: {missing}"
