"""mkdocs hooks (mkdocs.yml `hooks:`): generated content that has its source outside docs/.

- `<!-- benchmark-table: KIND -->` (KIND: model, convert, load, embed, embed_corpus, inference, precision,
  quant_configs, serve, prefix) becomes the table(s) of benchmarks/results/ for that benchmark, each with its date
  and machine, rendered by benchmarks/tables.py. A page that has any such marker must have one for every results
  file's benchmark, so no result goes unshown.
- `<!-- contributing -->` becomes CONTRIBUTING.md (without its title), which stays the one source of that page.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402  (benchmarks/tables.py)

BENCHMARK_MARKER = re.compile(r"<!-- benchmark-table: ([a-z_]+) -->")
CONTRIBUTING_MARKER = "<!-- contributing -->"


def benchmark_tables(markdown: str, page_path: str) -> str:
    """Replace every benchmark-table marker with the tables of that benchmark's results files."""
    files = tables.result_files(tables.RESULTS)
    wanted = set(BENCHMARK_MARKER.findall(markdown))
    unknown = wanted - set(tables.KINDS)
    if unknown:
        known = list(tables.KINDS)
        raise ValueError(f"{page_path}: unknown benchmark-table marker(s) {sorted(unknown)}; known: {known}")
    missing = {tables.kind_of(p) for p in files} - wanted
    if missing:
        raise ValueError(f"{page_path}: no benchmark-table marker for the results of {sorted(missing)}")

    def replace(match: re.Match) -> str:
        kind = match.group(1)
        rendered = [tables.render(p) for p in files if tables.kind_of(p) == kind]
        return "\n\n".join(rendered) or f"*No results for `{kind}` in benchmarks/results/ yet.*"

    return BENCHMARK_MARKER.sub(replace, markdown)


def contributing() -> str:
    """CONTRIBUTING.md without its first-level title (the page has its own)."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    return re.sub(r"\A# [^\n]*\n+", "", text)


def on_startup(**kwargs) -> None:
    """mkdocs-material's search segments Chinese text with jieba when it is installed (paddlenlp installs it);
    jieba logs its dictionary loading at DEBUG on stderr. Only its warnings are shown."""
    logging.getLogger("jieba").setLevel(logging.WARNING)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if BENCHMARK_MARKER.search(markdown):
        markdown = benchmark_tables(markdown, page.file.src_path)
    if CONTRIBUTING_MARKER in markdown:
        markdown = markdown.replace(CONTRIBUTING_MARKER, contributing())
    return markdown
