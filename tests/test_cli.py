"""paddle_qwen2.cli: `paddle-qwen2 finetune` (options, one-line errors with exit codes 1 / 2), `convert` without
paddle, and the installed wheel fine-tuning outside the repository."""

import json
import math
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_qwen2 import cli

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "model"
CHATS = REPO / "examples" / "data" / "chat_sft.jsonl"

FINETUNE_OPTIONS = [
    "--config",
    "--task",
    "--model",
    "--train-file",
    "--eval-file",
    "--output-dir",
    "--max-length",
    "--packing",
    "--num-labels",
    "--lora",
    "--lora-rank",
    "--lora-alpha",
    "--lora-dropout",
    "--lora-targets",
    "--epochs",
    "--max-steps",
    "--batch-size",
    "--gradient-accumulation-steps",
    "--learning-rate",
    "--lr-scheduler",
    "--warmup-steps",
    "--weight-decay",
    "--max-grad-norm",
    "--logging-steps",
    "--save-steps",
    "--save-total-limit",
    "--eval-steps",
    "--resume",
    "--seed",
    "--bf16",
    "--fp16",
    "--amp-level",
    "--export-hf",
    "--quiet",
]

# `python -m paddle_qwen2 ARGS` in a process where importing paddle or paddlenlp fails
WITHOUT_PADDLE = """
import runpy, sys

class BlockPaddle:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("paddle", "paddlenlp"):
            raise ImportError("the test blocks " + name)

sys.meta_path.insert(0, BlockPaddle())
runpy.run_module("paddle_qwen2", run_name="__main__", alter_sys=True)
"""


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    """`command` (paths allowed) with its output captured as text."""
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)


def run_without_paddle(*args, cwd: Path) -> subprocess.CompletedProcess:
    return run(sys.executable, "-c", WITHOUT_PADDLE, *args, cwd=cwd)


def the_error_line(err: str) -> str:
    """The one `error: ...` line of `err` (stderr may also hold library warnings, never a traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_finetune_help_lists_every_option_without_paddle(tmp_path):
    result = run_without_paddle("finetune", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"--[a-z0-9-]+", result.stdout))
    assert set(FINETUNE_OPTIONS) <= listed, sorted(set(FINETUNE_OPTIONS) - listed)


def test_convert_does_not_import_paddle(tmp_path):
    out = tmp_path / "paddle"
    result = run_without_paddle("convert", "--from-hf", str(MODEL), "--out", str(out), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


# (config file text or None, arguments ({config} is the config file), what the one error line says)
USAGE_ERRORS = [
    (
        '{"task": "sft", "learning_rat": 0.001}',
        ["--config", "{config}"],
        "{config}: unknown option(s) ['learning_rat']",
    ),
    ('{"task": "sft",', ["--config", "{config}"], "{config}: malformed JSON"),
    ('["sft"]', ["--config", "{config}"], "{config}: expected a JSON object"),
    (None, ["--config", "{config}"], "{config}: cannot read the --config file"),
    (None, ["--train-file", "d.jsonl"], "the following arguments are required: --model"),
    ('{"model": "m"}', ["--config", "{config}"], "the following arguments are required: --train-file"),
    (None, ["--model", "m", "--train-file", "d", "--bf16", "--fp16"], "--bf16 and --fp16 are exclusive"),
    (None, ["--model", "m", "--train-file", "d", "--task", "seq_cls", "--lora"], "--lora is supported for --task sft"),
    (None, ["--model", "m", "--train-file", "d", "--task", "chat"], "invalid choice: 'chat'"),
    (None, ["--model", "m", "--train-file", "d", "--max-steps", "ten"], "invalid int value: 'ten'"),
]


@pytest.mark.parametrize("config_text, args, message", USAGE_ERRORS)
def test_usage_errors_exit_2_in_one_line(config_text, args, message, tmp_path, capsys):
    config = tmp_path / "config.json"
    if config_text is not None:
        config.write_text(config_text)
    code = cli.main(["finetune", *(a.format(config=config) for a in args)])
    line = the_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("error: paddle-qwen2 finetune: ")
    assert message.format(config=config) in line


# (files to write into {tmp}, arguments, the start of the one error line after "error: ")
BAD_INPUT = [
    (
        {"bad.jsonl": '{"prompt": "a", "response": "b"}\n{oops\n'},
        ["--train-file", "{tmp}/bad.jsonl"],
        "{tmp}/bad.jsonl:2: not valid JSON",
    ),
    (
        {"bad.jsonl": '{"prompt": "a", "response": "b"}\n{"prompt": 3, "response": "b"}\n'},
        ["--train-file", "{tmp}/bad.jsonl"],
        "{tmp}/bad.jsonl:2: 'prompt' must be a string",
    ),
    (
        {"bad.csv": "text,label\ngood day,1\nbad day,2\n"},
        ["--task", "seq_cls", "--train-file", "{tmp}/bad.csv"],
        "{tmp}/bad.csv:3: label 2 is outside [0, num_labels=2)",
    ),
    (
        {"bad.csv": "text,score\ngood day,1\n"},
        ["--task", "seq_cls", "--train-file", "{tmp}/bad.csv"],
        "{tmp}/bad.csv:1: header lacks column(s) ['label']",
    ),
    ({}, ["--train-file", "{tmp}/absent.jsonl"], "{tmp}/absent.jsonl: no such file"),
    ({}, ["--model", "{tmp}", "--train-file", "{chats}"], "{tmp}: no checkpoint"),
    ({}, ["--train-file", "{chats}", "--resume", "{tmp}"], "{tmp}: not a Trainer checkpoint"),
]


@pytest.mark.parametrize("files, args, message", BAD_INPUT)
def test_bad_input_exits_1_in_one_line(files, args, message, tmp_path, capsys):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    names = {"tmp": tmp_path, "chats": CHATS}
    common = ["--model", str(MODEL), "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--quiet"]
    code = cli.main(["finetune", *common, *(a.format(**names) for a in args)])
    assert code == 1
    assert the_error_line(capsys.readouterr().err).startswith("error: " + message.format(**names))


@pytest.mark.slow
def test_script_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    command = [sys.executable, "-m", "paddle_qwen2", "finetune", "--model", MODEL, "--train-file", bad]
    result = run(*command, "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:2: not valid JSON")
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------------------------
# The wheel, installed in a fresh venv that sees the test venv's dependencies but not the repository
# ------------------------------------------------------------------------------------------------------------------


def build_wheel(dist: Path, work: Path) -> Path:
    """A wheel of the package, built from a copy of the repository's build inputs (nothing written in the repo)."""
    src = work / "src"
    skip = shutil.ignore_patterns(
        ".*", "__pycache__", "*.so", "*.egg-info", "build", "dist", "output", "tests", "examples", "benchmarks"
    )
    shutil.copytree(REPO, src, ignore=skip)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src, check=True)
    return next(dist.glob("paddle_qwen2-*.whl"))


def fresh_venv(folder: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; a .pth file appends the test venv's site-packages (the dependencies) after
    its own. Lines of a .pth file only extend sys.path, so the test venv's editable install (a finder that its
    own .pth file starts) stays inactive there."""
    run(sys.executable, "-m", "venv", "--without-pip", folder, check=True)
    python = folder / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, check=True)
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", check=True).stdout
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.strip()) / "test_venv_dependencies.pth").write_text("\n".join(deps) + "\n")
    return folder


@pytest.mark.slow
def test_installed_wheel_finetunes_outside_the_repository(tmp_path):
    assert REPO not in tmp_path.resolve().parents
    venv = fresh_venv(tmp_path / "venv", build_wheel(tmp_path / "dist", tmp_path))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run(venv / "bin" / "python", "-c", "import paddle_qwen2; print(paddle_qwen2.__file__)", cwd=cwd, env=env)
    assert Path(where.stdout.strip()).resolve().is_relative_to(venv.resolve()), where.stdout + where.stderr

    options = ["--max-steps", "4", "--batch-size", "4", "--max-length", "128", "--packing", "--logging-steps", "2"]
    data = ["--model", MODEL, "--train-file", CHATS, "--output-dir", "out"]
    result = run(venv / "bin" / "paddle-qwen2", "finetune", *data, *options, "--quiet", cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = cwd / "out"
    printed = json.loads(result.stdout[result.stdout.rindex("\n{\n") + 1 :])
    assert printed == json.loads((out / "summary.json").read_text())
    assert printed["task"] == "sft" and printed["steps"] == 4 and printed["final"] == "out/final"
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in log if "loss" in r}
    assert sorted(losses) == [2, 4] and all(math.isfinite(v) and v > 0 for v in losses.values()), log
