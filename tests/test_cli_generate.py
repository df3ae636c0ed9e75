"""`paddle-qwen2 generate`: streams what transformers' greedy `generate` answers on a tiny chat checkpoint (from a
checkpoint exported on the fly, from an export folder, and with the dygraph engine); bad input is one `error:` line,
exit code 1, and nothing left in the export cache."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import CHAT_EOS
from paddle_qwen2 import cli
from paddle_qwen2.export import export_model

pytestmark = pytest.mark.filterwarnings("ignore:Tensor do not have 'place' interface")

QUESTION = "What is the capital of France?"
SYSTEM = "You answer in one sentence."


def hf_chat_answer(folder, new_tokens: int) -> str:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=CHAT_EOS)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def run_generate(*args, cwd=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "paddle_qwen2", "generate", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=os.environ.copy())


@pytest.mark.slow
@pytest.mark.parametrize("source", ["checkpoint", "export", "dygraph"])
def test_generate_streams_the_transformers_answer(chat_checkpoint, tmp_path, source):
    folder = chat_checkpoint("gqa")
    model, engine = folder, "inference"
    if source == "export":
        model = export_model(folder, tmp_path / "exp", "decode")
    elif source == "dygraph":
        engine = "dygraph"
    done = run_generate(
        "--model",
        model,
        "--prompt",
        QUESTION,
        "--chat",
        "--system",
        SYSTEM,
        "--temperature",
        "0",
        "--max-new-tokens",
        20,
        "--engine",
        engine,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == hf_chat_answer(folder, 20) + "\n"
    summary = done.stderr.strip().splitlines()[-1]
    assert "20 generated" in summary or "finish_reason stop" in summary, summary


def _llama(tmp):
    (tmp / "llama").mkdir()
    (tmp / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return tmp / "llama"


BAD = [
    # (model, extra args, message part)
    (lambda tmp, ck, hf: tmp / "missing", [], "no such model folder"),
    (lambda tmp, ck, hf: _llama(tmp), [], "model_type 'llama'"),
    (lambda tmp, ck, hf: hf("gqa"), [], "no tokenizer.json"),
    (lambda tmp, ck, hf: export_model(ck("gqa"), tmp / "lm", "causal-lm"), [], "an export of task 'causal-lm'"),
    (
        lambda tmp, ck, hf: export_model(ck("gqa"), tmp / "dec", "decode"),
        ["--engine", "dygraph"],
        "runs only with engine 'inference'",
    ),
    (lambda tmp, ck, hf: ck("gqa"), ["--system", "be brief"], "--system needs --chat"),
    (lambda tmp, ck, hf: ck("gqa"), ["--temperature", "-1"], "temperature"),
    (lambda tmp, ck, hf: ck("gqa"), ["--top-p", "0"], "top_p"),
    (lambda tmp, ck, hf: ck("gqa"), ["--max-new-tokens", "0"], "max_new_tokens"),
    (lambda tmp, ck, hf: ck("gqa"), ["--prompt", "word " * 200], "the context holds 128"),
]


@pytest.mark.parametrize("model, extra, message", BAD, ids=[f"{i}-{b[2][:24]}" for i, b in enumerate(BAD)])
def test_bad_input_is_one_error_line(tmp_path, chat_checkpoint, hf_checkpoint, capsys, model, extra, message):
    folder = model(tmp_path, chat_checkpoint, hf_checkpoint)
    cache = os.environ["PADDLE_QWEN2_CACHE"]
    before = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
    args = ["generate", "--model", str(folder), "--prompt", "hi", "--quiet", *extra]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and message in err[-1], err
    assert not [line for line in err[:-1] if line.startswith("error")], err
    after = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
    assert not [name for name in after if name.startswith(".")], "a temporary export folder was left behind"
    assert set(after) - set(before) <= {n for n in after if n.startswith(f"{folder.name}-decode-")}
