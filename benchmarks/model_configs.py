"""The benchmarks' model configs: HF config.json files in configs/, found by name (`small`, `tiny`,
`bench-convert-1b`, `qwen2.5-0.5b`, ...) or by path."""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def config_path(name: str) -> Path:
    """`name` as a path if that file exists, else `configs/<name>.json`."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIGS / f"{name}.json"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.json") if '"model_type"' in p.read_text()))
    raise SystemExit(f"--config {name}: no such file, and not a config in configs/ ({names})")


def load_config(name: str) -> dict:
    """The HF config.json `name` (see `config_path`) as a dict."""
    return json.loads(config_path(name).read_text())
