"""A clean console: every `paddle-qwen2` subcommand, run as a real process on a fresh export cache, prints only its
own lines on stderr (progress bars, summaries, `paddle_qwen2: exporting ...`, uvicorn's lines for `serve`): no glog
line, no OMP_NUM_THREADS notice, no library INFO record, no foreign warning. With `--verbose` or
`PADDLE_QWEN2_LOG=debug` the libraries' lines come back (for `serve` also those of its engine process)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_qwen2.console import LOG_VARIABLE, PADDLE_THREAD_NOTICE, _WithoutThreadNotice

# lines of paddle, paddlenlp, datasets, glog and Python warnings of libraries
FOREIGN = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d"  # glog: W1207 14:23:10.775130  6677 eager_utils.cc:3584] ...
    r"|OMP_NUM_THREADS"  # paddle's import-time notice
    r"|PyTorch version .* available"  # datasets through the root logger paddle configures
    r"|\[\s*(DEBUG|INFO)\]"  # paddlenlp's logger
    r"|\w+Warning: "  # warnings.warn output
)
EXPORTING = r"paddle_qwen2: exporting .* for Paddle Inference into "
UVICORN = r"(INFO|WARNING|ERROR): +\S"


def tqdm(description: str) -> str:
    return rf"{description}: +\d+%\|"


def _convert(m):
    return ["convert", "--from-hf", m.hf, "--out", m.tmp / "paddle"]


def _export(m):
    return ["export", "--model", m.chat, "--out", m.tmp / "export", "--task", "causal-lm"]


def _generate(m):
    return ["generate", "--model", m.chat, "--prompt", "hi", "--max-new-tokens", "4"]


def _embed(m):
    (m.tmp / "texts.txt").write_text("hello\nworld\n", encoding="utf-8")
    return ["embed", "--model", m.st, "--input", m.tmp / "texts.txt", "--output", m.tmp / "vectors.npy"]


def _finetune(m):
    chats = [{"prompt": "What is the capital of France?", "response": "Paris."}, {"prompt": "Hi", "response": "Hi!"}]
    (m.tmp / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    data, out = m.tmp / "chats.jsonl", m.tmp / "run"
    return ["finetune", "--model", m.chat, "--train-file", data, "--output-dir", out, "--max-steps", "1"]


def _serve(m):
    return ["serve", "--model", m.chat]


# subcommand -> (its command line from the models, the patterns of its own stderr lines)
COMMANDS = {
    "convert":  (_convert,  []),
    "export":   (_export,   []),
    "generate": (_generate, [EXPORTING, r"\[.*\] \d+ prompt tokens, \d+ generated in "]),
    "embed":    (_embed,    [tqdm("Embedding")]),
    "finetune": (_finetune, [tqdm("TrainProcess")]),
    "serve":    (_serve,    [EXPORTING, r"paddle-qwen2 serve: ", UVICORN]),
}  # fmt: skip
# verbose cases: subcommand -> how verbose is asked for (convert never imports paddle: nothing comes back there)
VERBOSE = {"generate": "--verbose", "embed": f"{LOG_VARIABLE}=debug", "serve": "--verbose"}


class Models:
    def __init__(self, tmp: Path, hf_checkpoint, chat_checkpoint, st_folder) -> None:
        self.tmp = tmp
        self.hf = hf_checkpoint("gqa")
        self.chat = chat_checkpoint("gqa")
        self.st = st_folder("last")


@pytest.fixture
def models(tmp_path, hf_checkpoint, chat_checkpoint, st_folder) -> Models:
    return Models(tmp_path, hf_checkpoint, chat_checkpoint, st_folder)


def cli_output(args: list, tmp: Path, env_extra: dict | None = None) -> str:
    """stderr of `python -m paddle_qwen2 *args` on an export cache of its own (for `serve`: stdout and stderr
    from start to SIGTERM, the server started on a free loopback port)."""
    env = {k: v for k, v in os.environ.items() if k != LOG_VARIABLE}
    env.update({"PADDLE_QWEN2_CACHE": str(tmp / "cache")}, **(env_extra or {}))
    args = [str(a) for a in args]
    if args[0] == "serve":
        from serving_helpers import ServerProcess

        server = ServerProcess.start(args[1:], tmp, env=env)
        assert server.stop() == 0, server.log()[-3000:]
        return server.log()
    command = [sys.executable, "-m", "paddle_qwen2", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def foreign_lines(output: str, ours: list[str]) -> list[str]:
    """The lines of `output` (tqdm's `\\r` updates split apart) that match none of the patterns `ours`."""
    own = re.compile("|".join(f"(?:{p})" for p in ours)) if ours else None
    return [line for line in output.splitlines() if line.strip() and not (own and own.match(line.strip()))]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_only_our_lines(command, models):
    build, ours = COMMANDS[command]
    output = cli_output(build(models), models.tmp)
    assert foreign_lines(output, ours) == [], output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("command", VERBOSE)
def test_verbose_brings_the_libraries_lines_back(command, models):
    build, ours = COMMANDS[command]
    how = VERBOSE[command]
    if how.startswith("--"):
        output = cli_output([*build(models), how], models.tmp)
    else:
        output = cli_output(build(models), models.tmp, dict([how.split("=", 1)]))
    others = foreign_lines(output, ours)
    assert any(FOREIGN.search(line) for line in others), output[-3000:]


# ------------------------------------------------------------------------------------------------ without paddle
def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in (LOG_VARIABLE, "GLOG_minloglevel")}
    command = [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env={**environment, **env})


SETUP = """
import os, warnings
from paddle_qwen2.console import configure_console
print(configure_console(), os.environ.get("GLOG_minloglevel"), os.environ.get("PADDLE_QWEN2_LOG"))
warnings.warn_explicit("ours", UserWarning, "loading.py", 1, module="paddle_qwen2.loading")
warnings.warn_explicit("theirs", UserWarning, "math_op_patch.py", 1, module="paddle.pir.math_op_patch")
"""


@pytest.mark.parametrize(
    "env, printed, warned",
    [
        ({}, "False 2 None", ["ours"]),
        ({"GLOG_minloglevel": "0"}, "False 0 None", ["ours"]),  # the user's setting wins
        ({"PYTHONWARNINGS": "default"}, "False 2 None", ["ours", "theirs"]),  # and so do the user's filters
        ({LOG_VARIABLE: "DEBUG"}, "True None debug", ["ours", "theirs"]),
    ],
)
def test_settings(env, printed, warned):
    done = run_python(SETUP, **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed
    assert re.findall(r"UserWarning: (\w+)", done.stderr) == warned


def test_thread_notice_is_dropped_then_stderr_is_restored(monkeypatch):
    stream = io.StringIO()
    wrapper = _WithoutThreadNotice(stream)
    monkeypatch.setattr(sys, "stderr", wrapper)
    print("before", file=sys.stderr)
    print(f"{PADDLE_THREAD_NOTICE[0]}2, not 1. The computation speed ...", file=sys.stderr)
    print(PADDLE_THREAD_NOTICE[1], file=sys.stderr)
    assert sys.stderr is stream
    print("after", file=sys.stderr)
    assert stream.getvalue() == "before\nafter\n"
