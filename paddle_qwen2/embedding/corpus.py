"""Embedding a corpus: shards in, one output per shard, streamed, resumable and split over ranks.

A run reads each input shard in chunks of `chunk_size` texts, embeds a chunk in length-sorted batches under a token
budget and commits it to the shard's output (`ShardWriter`: one atomic part file per chunk), so memory depends on
the chunk and batch sizes only and a crash loses at most the chunk in flight. Rerunning the same command resumes:
a finished shard is skipped, a half-done one continues after its last committed chunk, and the outputs are
byte-identical to an uninterrupted run's.

Two layouts:
    file mode    one input file, `--output FILE.{npy,jsonl,parquet}`: the file (its parts and run spec live beside
                 it as `.{name}.parts/` and `.{name}.run.json` until it is complete).
    folder mode  anything else (several files, a folder, a glob): `--output DIR` receives `DIR/{shard name}.{fmt}`
                 per input shard, and `DIR/manifest.json` (model, options, per-shard rows, bytes and sha256) once
                 every shard exists. `DIR/.embed/` holds the run spec (`run.json`), a record per finished shard
                 (`shards/{name}.json`) and each rank's progress (`progress/rank-{r}.json`).

Ranks: under `python -m paddle.distributed.launch` each process reads its rank and the world size from the
launcher's environment (`PADDLE_TRAINER_ID`, `PADDLE_TRAINERS_NUM`) and takes its share of the shards (largest
first, each to the rank with the fewest bytes so far); ranks never write the same file. Rank 0 shows the progress
of the whole corpus, waits for every shard's record and writes the manifest. The output folder must be one that
every rank sees (a shared filesystem across nodes).

A run spec that differs from the one already in the output (another model, prompt, format, chunk size...) is an
`EmbedInputError` naming what differs, unless `overwrite` (which discards this rank's outputs first).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import EmbedInputError
from .io import atomic_output, check_output_path
from .shard_writer import OUTPUT_FORMATS, ShardResult, ShardWriter
from .shards import Shard, count_texts, find_shards, read_chunks

__all__ = [
    "MANIFEST",
    "CorpusPlan",
    "EncodeOptions",
    "Rank",
    "Summary",
    "Target",
    "embed_corpus",
    "model_identity",
    "plan_corpus",
    "read_progress",
]

MANIFEST = "manifest.json"
STATE_DIR = ".embed"
MANIFEST_FORMAT = "paddle_qwen2.embeddings/1"
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Rank:
    """This process's place among the ranks of a launch: `rank` in `[0, world)`."""

    rank: int = 0
    world: int = 1
    launch: str = ""  # the same for every rank of one launch (its endpoints), another for the next launch

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Rank:
        """The rank `paddle.distributed.launch` gave this process (`PADDLE_TRAINER_ID` of `PADDLE_TRAINERS_NUM`);
        rank 0 of 1 outside a launch."""
        env = os.environ if env is None else env
        try:
            rank = int(env.get("PADDLE_TRAINER_ID", "0"))
            world = int(env.get("PADDLE_TRAINERS_NUM", "1"))
        except ValueError:
            raise EmbedInputError(
                f"PADDLE_TRAINER_ID={env.get('PADDLE_TRAINER_ID')!r} / PADDLE_TRAINERS_NUM="
                f"{env.get('PADDLE_TRAINERS_NUM')!r}: expected integers (set by paddle.distributed.launch)"
            ) from None
        if not 0 <= rank < world:
            raise EmbedInputError(f"PADDLE_TRAINER_ID={rank} is not in [0, PADDLE_TRAINERS_NUM={world})")
        endpoints = env.get("PADDLE_TRAINER_ENDPOINTS", "")
        return cls(rank, world, hashlib.sha256(endpoints.encode()).hexdigest()[:16] if endpoints else "")


@dataclass(frozen=True)
class EncodeOptions:
    """What `EmbeddingEncoder.embed_texts` is called with for every chunk (and what the run spec records)."""

    prompt_name: str | None = None
    prompt: str | None = None
    normalize_embeddings: bool | None = None
    truncate_dim: int | None = None
    batch_size: int | None = None
    max_batch_tokens: int | None = 8192


@dataclass(frozen=True)
class Target:
    """One input shard and where its output and (folder mode) its record of completion go."""

    shard: Shard
    output: Path
    record: Path | None = None


@dataclass
class CorpusPlan:
    """The shards of a run and their outputs; `folder` is folder mode (manifest, records, ranks)."""

    targets: list[Target]
    output: Path
    fmt: str
    folder: bool

    @property
    def state_dir(self) -> Path:
        return self.output / STATE_DIR

    def spec_path(self) -> Path:
        """Where the run spec is kept while the run is not complete."""
        if self.folder:
            return self.state_dir / "run.json"
        return self.output.with_name(f".{self.output.name}.run.json")


@dataclass
class Summary:
    """What a run did: `texts` in the whole corpus, `new_texts` / `tokens` embedded by this run (every rank)."""

    texts: int
    new_texts: int
    tokens: int
    seconds: float
    dimension: int
    shards: int
    output: Path
    rank: int = 0


# ---------------------------------------------------------------------------------------------------- planning


def plan_corpus(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, fmt: str | None) -> CorpusPlan:
    """The shards of `inputs` and their outputs under `output` (see the module docstring for the two modes).
    `fmt` is `--output-format` (npy | jsonl | parquet; folder mode's default: parquet). Shards inside the output
    folder are not inputs (an output folder inside the input folder: its outputs). EmbedInputError for a bad
    input (from `find_shards`), an output that cannot be what the mode needs, or a format that contradicts it."""
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise EmbedInputError(f"--output-format {fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
    shards = find_shards(inputs)
    output = Path(output)
    suffix = output.suffix.lower()
    if len(inputs) == 1 and Path(inputs[0]).is_file() and suffix and not output.is_dir():
        return _file_plan(shards[0], output, suffix, fmt)
    if output.is_file() or suffix.lstrip(".") in OUTPUT_FORMATS:
        raise EmbedInputError(
            f"{output}: with {len(shards)} input shard(s) from {', '.join(map(str, inputs))} --output is a folder "
            f"(one output per shard); give a folder name ({suffix} output files take exactly one input file)"
        )
    shards = [s for s in shards if output.resolve() not in s.path.resolve().parents]  # its own outputs
    if not shards:
        raise EmbedInputError(f"{', '.join(map(str, inputs))}: no input shard outside the output folder {output}")
    fmt = fmt or "parquet"
    targets = [Target(s, output / f"{s.name}.{fmt}", output / STATE_DIR / "shards" / f"{s.name}.json") for s in shards]
    return CorpusPlan(targets, output, fmt, folder=True)


def _file_plan(shard: Shard, output: Path, suffix: str, fmt: str | None) -> CorpusPlan:
    check_output_path(output)  # a known format, in a writable folder
    suffix = suffix.lstrip(".")
    if fmt is not None and fmt != suffix:
        raise EmbedInputError(f"{output}: the file name says {suffix}, --output-format says {fmt}")
    return CorpusPlan([Target(shard, output)], output, suffix, folder=False)


def model_identity(path: str | os.PathLike, **settings) -> dict:
    """The model of a run as the run spec records it: its folder, a fingerprint of its files (every file's
    relative name and size, and the bytes of its JSON files) and the loading `settings` (engine, weights...)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = file.relative_to(root).as_posix()
        digest.update(f"{rel}\0{file.stat().st_size}\0".encode())
        if file.suffix == ".json":
            digest.update(file.read_bytes())
    return {"path": str(root.resolve()), "fingerprint": digest.hexdigest()[:16], **settings}


def shares(targets: list[Target], world: int) -> list[list[Target]]:
    """`targets` split over `world` ranks: largest shard first, each to the rank with the fewest bytes so far
    (ties: the lower rank); every rank's share keeps the plan's order. Deterministic for the same shards."""
    load = [0] * world
    owner = {}
    for i in sorted(range(len(targets)), key=lambda i: (-targets[i].shard.size, i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += targets[i].shard.size
    return [[t for i, t in enumerate(targets) if owner[i] == r] for r in range(world)]


# ---------------------------------------------------------------------------------------------------- run spec


def _write_json(path: Path, value: dict) -> None:
    """`value` as indented, key-sorted JSON at `path`, atomically (a temp file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise EmbedInputError(f"{path}: not a readable JSON file ({e}); remove it or pass --overwrite") from None


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf where the two specs differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _claim(plan: CorpusPlan, spec: dict, overwrite: bool) -> None:
    """Check `spec` against the run spec (or manifest) already in the output, then record it there."""
    existing = None if overwrite else _read_json(plan.spec_path())
    if existing is None and plan.folder and not overwrite:
        manifest = _read_json(plan.output / MANIFEST)
        existing = {k: manifest[k] for k in ("model", "options")} if manifest else None
    if existing is not None:
        # the model's folder may sit at another path on another node: its fingerprint says whether it is the same
        diffs = [d for d in _differences(existing, spec) if not d.startswith("model.path:")]
        if diffs:
            raise EmbedInputError(
                f"{plan.output}: was embedded with other settings ({'; '.join(diffs)}); rerun with the same model "
                "and options to resume, or pass --overwrite to start again"
            )
    if existing != spec:
        _write_json(plan.spec_path(), spec)


# ---------------------------------------------------------------------------------------------------- progress


class _Progress:
    """Texts and tokens done by this rank, published in `.embed/progress/rank-{r}.json` after every chunk (folder
    mode); rank 0's bar adds up every rank's file and counts the whole corpus."""

    def __init__(self, plan: CorpusPlan, rank: Rank, total: int, done: int, show: bool):
        self.path = plan.state_dir / "progress" / f"rank-{rank.rank}.json" if plan.folder else None
        self.plan, self.rank, self.total = plan, rank, total
        self.done, self.new, self.tokens = done, 0, 0
        self.started = time.time()
        self.bar = None
        if show and rank.rank == 0:
            self.bar = tqdm(total=total, unit="text", desc="Embedding", dynamic_ncols=True, smoothing=0.1)
        self.publish()

    def resume(self, texts: int) -> None:
        """`texts` an earlier run committed: done, not embedded by this run."""
        self.done += texts
        self.publish()

    def add(self, texts: int, tokens: int) -> None:
        self.done, self.new, self.tokens = self.done + texts, self.new + texts, self.tokens + tokens
        self.publish()
        self.refresh()

    def publish(self) -> None:
        if self.path is not None:
            own = {"texts": self.done, "new_texts": self.new, "tokens": self.tokens, "total": self.total}
            _write_json(self.path, dict(own, launch=self.rank.launch))

    def totals(self) -> dict[str, int]:
        """`read_progress` over every rank, this one's own counts taken as they are."""
        own = {"texts": self.done, "new_texts": self.new, "tokens": self.tokens, "total": self.total}
        if not self.plan.folder:
            return own
        others = read_progress(self.plan, self.rank.world, self.rank.launch, skip=self.rank.rank)
        return {key: own[key] + others[key] for key in own}

    def refresh(self) -> None:
        if self.bar is None:
            return
        sums = self.totals()
        self.bar.total = sums["total"]
        self.bar.n = sums["texts"]
        elapsed = max(time.time() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{sums['tokens'] / elapsed:,.0f} tokens/s", refresh=False)
        self.bar.refresh()

    def close(self, ok: bool = True) -> None:
        """Close the bar: left on screen after a complete run, cleared after a failure (its error line follows)."""
        if self.bar is not None:
            self.refresh()
            self.bar.leave = ok
            self.bar.close()


def read_progress(plan: CorpusPlan, world: int, launch: str | None, skip: int | None = None) -> dict[str, int]:
    """texts (committed, earlier runs included), new_texts and tokens (embedded by this run) and total (texts of
    the ranks' shares) summed over the progress files of ranks `[0, world)` but `skip` that ranks of `launch`
    (`Rank.launch`; None: any) wrote: files left by an earlier launch do not count."""
    sums = dict.fromkeys(("texts", "new_texts", "tokens", "total"), 0)
    for r in range(world):
        if r == skip:
            continue
        try:
            value = json.loads((plan.state_dir / "progress" / f"rank-{r}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if launch is None or value.get("launch") == launch:
            for key in sums:
                sums[key] += int(value.get(key, 0))
    return sums


# ---------------------------------------------------------------------------------------------------- the run


def _finished(target: Target) -> dict | None:
    """The record of a finished shard whose output is still the file the record describes, else None."""
    if target.record is None:
        return None
    record = _read_json(target.record)
    if record is None or not target.output.is_file() or target.output.stat().st_size != record.get("bytes"):
        return None
    return record


def _shard_record(plan: CorpusPlan, target: Target, result: ShardResult) -> dict:
    rel = target.output.relative_to(plan.output).as_posix()
    return {"input": str(target.shard.path), "output": rel, **asdict(result)}


class _RankRun:
    """One rank's work: its share of the shards, chunk by chunk, with its progress."""

    def __init__(self, plan: CorpusPlan, model, options: EncodeOptions, rank: Rank, text_field: str, chunk_size: int):
        self.plan, self.model, self.options, self.rank = plan, model, options, rank
        self.text_field, self.chunk_size = text_field, chunk_size
        self.mine = shares(plan.targets, rank.world)[rank.rank]

    def discard(self) -> None:
        """Remove this rank's outputs, parts and records (and rank 0: the manifest)."""
        for target in self.mine:
            ShardWriter(target.output, self.plan.fmt, self.text_field).discard()
            if target.record is not None:
                target.record.unlink(missing_ok=True)
        if self.rank.rank == 0 and self.plan.folder:
            (self.plan.output / MANIFEST).unlink(missing_ok=True)

    def run(self, show: bool) -> _Progress:
        """Embed every unfinished shard of this rank's share; returns its progress."""
        finished = {t.output: _finished(t) for t in self.mine}
        todo = [t for t in self.mine if finished[t.output] is None]
        done = sum(r["rows"] for r in finished.values() if r)
        total = done + sum(count_texts(t.shard) for t in todo)
        progress = _Progress(self.plan, self.rank, total, done, show)
        try:
            for target in todo:
                self._shard(target, progress)
        except BaseException:
            progress.close(ok=False)
            raise
        if self.rank.rank != 0 or not self.plan.folder:
            progress.close()
        return progress

    def _shard(self, target: Target, progress: _Progress) -> None:
        writer = ShardWriter(target.output, self.plan.fmt, self.text_field)
        start = writer.committed()
        progress.resume(start)
        for chunk in read_chunks(target.shard, self.text_field, self.chunk_size, start):
            embeddings, tokens = self.model.embed_texts(chunk.records.texts, **asdict(self.options))
            writer.commit(chunk, embeddings)
            progress.add(len(chunk.records.texts), tokens)
        result = writer.finish()
        if target.record is not None:
            _write_json(target.record, _shard_record(self.plan, target, result))


def _forget_if_unstarted(plan: CorpusPlan) -> None:
    """File mode, after a failure: remove the run spec and parts folder when no chunk was committed, so a run that
    failed on its input leaves nothing behind (one that committed chunks keeps them to resume from)."""
    writer = ShardWriter(plan.output, plan.fmt)
    if writer.committed() == 0:
        shutil.rmtree(writer.parts_dir, ignore_errors=True)  # not discard(): an earlier output file stays
        plan.spec_path().unlink(missing_ok=True)


def _wait_for_all(plan: CorpusPlan, progress: _Progress) -> list[dict]:
    """Rank 0: the records of every shard, once all exist (other ranks may still be working)."""
    while True:
        records = [_finished(t) for t in plan.targets]
        if all(records):
            return records
        progress.refresh()
        time.sleep(_POLL_SECONDS)


def _manifest(plan: CorpusPlan, spec: dict, records: list[dict], dimension: int) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        **spec,
        "dimension": dimension,
        "texts": sum(r["rows"] for r in records),
        "shards": records,
    }


def embed_corpus(
    plan: CorpusPlan,
    model,
    spec: dict,
    options: EncodeOptions,
    text_field: str = "text",
    chunk_size: int = 2048,
    rank: Rank | None = None,
    overwrite: bool = False,
    show_progress_bar: bool = True,
) -> Summary:
    """Run `plan` with `model` (an `EmbeddingEncoder`) as this `rank`: embed this rank's unfinished shards, and on
    rank 0 of a folder run wait for every shard and write the manifest. `spec` is the run spec (model identity and
    every option that changes the outputs), checked against the output's. Returns what the run did."""
    rank = rank or Rank()
    if not plan.folder and rank.world > 1:
        raise EmbedInputError(f"{plan.output}: one output file cannot be split over {rank.world} ranks; give a folder")
    if chunk_size <= 0:
        raise EmbedInputError(f"--chunk-size must be positive, got {chunk_size}")
    start = time.perf_counter()
    work = _RankRun(plan, model, options, rank, text_field, chunk_size)
    if overwrite:
        work.discard()
    _claim(plan, spec, overwrite)
    if plan.folder and rank.rank == 0 and not all(_finished(t) for t in plan.targets):
        (plan.output / MANIFEST).unlink(missing_ok=True)  # no longer complete: shards were added or removed
    try:
        progress = work.run(show_progress_bar)
    except BaseException:
        if not plan.folder:
            _forget_if_unstarted(plan)
        raise
    dimension = options.truncate_dim or model.dimension
    if plan.folder and rank.rank == 0:
        try:
            records = _wait_for_all(plan, progress)
        except BaseException:
            progress.close(ok=False)
            raise
        _write_json(plan.output / MANIFEST, _manifest(plan, spec, records, dimension))
        progress.close()
    elif not plan.folder:
        plan.spec_path().unlink(missing_ok=True)
    sums = progress.totals()
    return Summary(
        texts=sums["texts"],
        new_texts=sums["new_texts"],
        tokens=sums["tokens"],
        seconds=time.perf_counter() - start,
        dimension=dimension,
        shards=len(plan.targets),
        output=plan.output,
        rank=rank.rank,
    )
