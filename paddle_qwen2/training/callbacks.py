"""Trainer callbacks and the files they write into the Trainer's output folder.

JsonlLogger        appends every Trainer log (loss, learning_rate, eval metrics) to a JSON-lines file
                   (`train_log.jsonl`); `read_log` reads it back
CheckpointMarker   writes `checkpoint-N/checkpoint_complete.json` once `checkpoint-N` is fully saved;
                   `last_complete_checkpoint` finds the newest such folder (what `--resume` continues from)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from paddlenlp.trainer import TrainerCallback

from ..jsonl import read_jsonl

__all__ = ["COMPLETE_MARKER", "CheckpointMarker", "JsonlLogger", "last_complete_checkpoint", "read_log"]

COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class JsonlLogger(TrainerCallback):
    """Appends every Trainer log (loss, learning_rate, eval metrics) with its step to a JSON-lines file and
    prints the loss / learning-rate lines (unless `echo=False`)."""

    def __init__(self, path: Path, echo: bool = True):
        self.path, self.echo = Path(path), echo

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not args.should_save:
            return
        record = {"step": int(state.global_step), "epoch": state.epoch}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float)) and k not in ("global_step",)})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.echo:
            _echo(record)


def _echo(record: dict) -> None:
    if "loss" in record:
        lr = record.get("learning_rate", 0)
        print(f"  step {record['step']:>5}  loss {record['loss']:.4f}  lr {lr:.2e}", flush=True)
    elif "eval_loss" in record:
        extra = f"  accuracy {record['eval_accuracy']:.3f}" if "eval_accuracy" in record else ""
        print(f"  step {record['step']:>5}  eval loss {record['eval_loss']:.4f}{extra}", flush=True)


def read_log(path: Path) -> dict[int, dict]:
    """`step -> last record` of a `train_log.jsonl` (a resumed run overwrites the steps it repeats); {} without the
    file, `JSONLError` naming the line for one that is not JSON."""
    records: dict[int, dict] = {}
    if Path(path).is_file():
        for _, record in read_jsonl(path):
            if "loss" in record:
                records[record["step"]] = record
    return records


class CheckpointMarker(TrainerCallback):
    """After the Trainer has finished writing `checkpoint-N` (model, optimizer, scheduler, trainer state, RNG
    state), records the files and their sizes in `checkpoint-N/checkpoint_complete.json` (written atomically).
    A checkpoint cut short by a kill has no marker, or files that no longer match it."""

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        files = {
            p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != COMPLETE_MARKER
        }
        tmp = folder / (COMPLETE_MARKER + ".tmp")
        tmp.write_text(json.dumps({"step": int(state.global_step), "files": files}, indent=1))
        os.replace(tmp, folder / COMPLETE_MARKER)


def _is_complete(folder: Path) -> bool:
    try:
        files = json.loads((folder / COMPLETE_MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def last_complete_checkpoint(folder: Path) -> Path | None:
    """Newest `checkpoint-N` in `folder` whose save finished (see `CheckpointMarker`); folders left half-written
    or half-deleted by a kill are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and _is_complete(p)]
    return max(done)[1] if done else None
