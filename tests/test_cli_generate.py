"""`paddle-qwen2 generate`: streams what transformers' greedy `generate` answers on a tiny chat checkpoint (from a
checkpoint exported on the fly, from an export folder, and with the dygraph engine); `--stats` prints one JSON line
whose token counts are transformers' (prompt, generated ids) and `--ignore-eos` goes on past eos as transformers'
`generate` without an eos id does (on the bundled trained model, whose answer ends on eos); bad input is one
`error:` line, exit code 1, and nothing left in the export cache."""

import copy
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import CHAT_EOS, EXAMPLE_MODEL
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
    (lambda tmp, ck, hf: ck("gqa"), ["--engine", "inference", "--weights", "int8"], "does not run int8 weights"),
    (lambda tmp, ck, hf: ck("gqa"), ["--engine", "dygraph", "--weights", "bfloat16"], "run on engine 'inference'"),
    (lambda tmp, ck, hf: ck("gqa"), ["--system", "be brief"], "--system needs --chat"),
    (lambda tmp, ck, hf: ck("gqa"), ["--ignore-eos"], "--ignore-eos needs --max-new-tokens"),
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


# ----------------------------------------------------------------------------------------------------------------
# --stats and --ignore-eos, on the bundled trained model: its greedy answers to ITALY (22 tokens) and to the chat
# message EUROPE (5 tokens) end on <|endoftext|> (4000)
# ----------------------------------------------------------------------------------------------------------------
ITALY = "The capital of Italy is Rome."
EUROPE = "Italy is a country in Europe."
STATS_KEYS = {"prompt_tokens", "completion_tokens", "ttft_s", "decode_tokens_per_s", "engine", "weights"}


@pytest.fixture(scope="module")
def bundled_hf():
    """transformers' tokenizer and model of the bundled checkpoint."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(EXAMPLE_MODEL)
    return tokenizer, transformers.AutoModelForCausalLM.from_pretrained(EXAMPLE_MODEL).eval()


def hf_greedy(bundled_hf, prompt: str, chat: bool, new_tokens: int, stop_on_eos: bool) -> tuple[list, list]:
    """(prompt ids, generated ids) of transformers' greedy `generate`; without `stop_on_eos` no token ends it."""
    tokenizer, model = bundled_hf
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    else:
        ids = tokenizer(prompt).input_ids
    saved = model.generation_config
    if not stop_on_eos:  # (an eos_token_id=None argument would be replaced by the model's default)
        model.generation_config = copy.deepcopy(saved)
        model.generation_config.eos_token_id = None
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)
    finally:
        model.generation_config = saved
    return list(ids), out[0, len(ids) :].tolist()


def generate_with_stats(capsys, prompt: str, *extra) -> tuple[str, dict, float]:
    """stdout, the --stats record (the one and last stderr line that is not the export notice) and the wall time of
    `paddle-qwen2 generate` on the bundled model, run in this process."""
    start = time.perf_counter()
    assert cli.main(["generate", "--model", str(EXAMPLE_MODEL), "--prompt", prompt, "--stats", *extra]) == 0
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if not line.startswith("paddle_qwen2: exporting")]
    assert len(lines) == 1, err
    record = json.loads(lines[0])
    assert set(record) == STATS_KEYS, record
    assert 0 < record["ttft_s"] < seconds, record
    return out, record, seconds


STATS_CASES = [
    # (prompt, extra args, chat, the answer's length without --ignore-eos, --ignore-eos tokens or None, engine)
    (ITALY, [], False, 22, None, "inference"),
    (ITALY, ["--ignore-eos", "--max-new-tokens", "30", "--quiet"], False, 22, 30, "inference"),
    (EUROPE, ["--ignore-eos", "--max-new-tokens", "9", "--chat", "--engine", "dygraph"], True, 5, 9, "dygraph"),
]


@pytest.mark.parametrize(
    "prompt, extra, chat, stops_at, exact, engine", STATS_CASES, ids=["stops-on-eos", "ignore-eos", "chat-dygraph"]
)
def test_stats_line_and_ignore_eos(capsys, bundled_hf, prompt, extra, chat, stops_at, exact, engine):
    eos = bundled_hf[1].generation_config.eos_token_id
    prompt_ids, reference = hf_greedy(bundled_hf, prompt, chat, 100, stop_on_eos=True)
    assert reference[-1] == eos and len(reference) == stops_at, reference  # stops on eos well before the limit
    if exact is not None:  # without an eos id the greedy answer passes through eos and goes on
        prompt_ids, reference = hf_greedy(bundled_hf, prompt, chat, exact, stop_on_eos=False)
        assert len(reference) == exact and reference[stops_at - 1] == eos, reference
    out, record, seconds = generate_with_stats(capsys, prompt, *extra)
    assert out == bundled_hf[0].decode(reference, skip_special_tokens=True) + "\n"
    assert record["prompt_tokens"] == len(prompt_ids)
    assert record["completion_tokens"] == len(reference)
    assert record["engine"] == engine and record["weights"] == "float32"
    # (completion_tokens - 1) tokens after the first, within the run's wall time
    assert (len(reference) - 1) / record["decode_tokens_per_s"] < seconds - record["ttft_s"], record


def test_stats_report_the_quantized_route(capsys):
    """`--weights int8` without `--engine` runs on onnxruntime, and `--stats` says so; --ignore-eos gives exactly
    --max-new-tokens tokens there too."""
    args = ["--weights", "int8", "--ignore-eos", "--max-new-tokens", "6"]
    out, record, _ = generate_with_stats(capsys, ITALY, *args)
    assert record["engine"] == "onnxruntime" and record["weights"] == "int8", record
    assert record["completion_tokens"] == 6 and out.strip(), (out, record)
