"""The inference engine (`paddle_qwen2.inference.LLM`) over the exported `decode` program: its logits and greedy
tokens equal transformers' on left-padded batches of two for each model variant, with oneDNN on and off; the
dygraph engine gives the same; rows joining and leaving a running batch (continuous batching) get the tokens they
get alone; sampling, stop tokens, stop strings and streaming."""

import json

import numpy as np
import pytest
import torch

from conftest import CHAT_EOS, assert_close
from paddle_qwen2.export import META_FILE, export_model
from paddle_qwen2.inference import LLM, Batch, EngineError, SamplingParams

pytestmark = pytest.mark.filterwarnings("ignore:Tensor do not have 'place' interface")

NEW_TOKENS = 8
# two prompts of different lengths: a left-padded batch of two
PROMPTS = [[17, 230, 1201, 9, 3050, 77, 402], [5, 919, 2048, 64, 311]]
VARIANTS = ["gqa", "tied", "sliding", "head_dim", "rope_linear", "rope_dynamic", "rope_yarn"]


@pytest.fixture(scope="module")
def decode_export(chat_checkpoint, tmp_path_factory):
    """`decode_export(variant)` -> a `--task decode` export folder of `chat_checkpoint(variant)`."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            out = tmp_path_factory.mktemp("decode") / variant
            cache[variant] = export_model(chat_checkpoint(variant), out, "decode")
        return cache[variant]

    return get


def hf_generate(folder, prompts, new_tokens=NEW_TOKENS, **kwargs) -> list[list[int]]:
    """transformers' greedy `generate` on the left-padded batch (eager attention, as the reference run)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[4000] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=4000, **kwargs
        )
    return [row[width:].tolist() for row in out]


def hf_last_logits(folder, prompt: list[int]) -> np.ndarray:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0, -1].numpy()


def trim_at_stop(tokens: list[int], stops=CHAT_EOS) -> list[int]:
    """HF pads a finished row with the pad token; the engine's row ends at its stop token."""
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


GREEDY = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)


# ---------------------------------------------------------------------------------------- equal to transformers
@pytest.mark.slow
@pytest.mark.paddle26
@pytest.mark.parametrize("onednn", [False, True, None], ids=["plain", "onednn", "auto"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_program_generates_as_transformers(decode_export, chat_checkpoint, variant, onednn):
    """auto: prefill with oneDNN, one-token steps without (two predictors)."""
    folder = decode_export(variant)
    if onednn and not json.loads((folder / META_FILE).read_text())["paddle_inference"]["onednn"]:
        # Paddle 2.6's oneDNN fails on these programs: the export says so and the engine refuses oneDNN for it
        with pytest.raises(EngineError, match="oneDNN does not run this program"):
            LLM.from_pretrained(folder, onednn=True)
        return
    llm = LLM.from_pretrained(folder, onednn=onednn)
    logits, _ = llm.prefill(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        want = hf_last_logits(chat_checkpoint(variant), prompt)
        assert_close(logits[row], want, max_abs=1e-4, mean_abs=1e-5, what=f"{variant} prefill row {row}")
    got = [c.token_ids for c in llm.generate(PROMPTS, GREEDY)]
    assert got == [trim_at_stop(t) for t in hf_generate(chat_checkpoint(variant), PROMPTS)]


@pytest.mark.parametrize("onednn, prefill", [(None, "oneDNN on prefill"), (False, "prompts and batched steps")])
def test_where_prompts_run(decode_export, onednn, prefill, monkeypatch):
    """auto: prompts on a oneDNN predictor of their own, batched steps' matmuls on all threads; off (what `serve`
    runs): one predictor of one thread (one copy of the weights) whose matmuls get all threads for prompts and
    batched steps."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    llm = LLM.from_pretrained(decode_export("gqa"), onednn=onednn)
    assert prefill in llm.describe() and "cpu 1 thread, oneDNN off" in llm.describe(), llm.describe()
    assert (llm.step.prefill_lanes is llm.step.step_lanes) == (onednn is False)
    assert llm.step.matmul_threads == 2


@pytest.mark.paddle26
def test_an_export_with_the_earlier_cache_layout_still_runs(chat_checkpoint, tmp_path, monkeypatch):
    """Exports written before the `[batch, kv_heads, past, head_dim]` cache have `[batch, past, kv_heads,
    head_dim]` in their meta's `cache_layout`: the engine feeds them that layout (prefill, joining rows, leaving
    rows) and gets transformers' tokens."""
    from paddle_qwen2.export.programs import DecodeProgram

    monkeypatch.setattr(DecodeProgram, "CACHE_LAYOUT", ("batch", "past", "kv_heads", "head_dim"))
    folder = export_model(chat_checkpoint("gqa"), tmp_path / "old", "decode")
    monkeypatch.undo()
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["decode"]["cache_layout"] == ["batch", "past", "kv_heads", "head_dim"]
    assert meta["inputs"][2]["shape"] == ["batch", "past", 2, 16]
    llm = LLM.from_pretrained(folder)
    logits, first = llm.prefill([PROMPTS[0]])
    assert list(first.cache[0].shape) == [1, len(PROMPTS[0]), 2, 16]
    _, second = llm.prefill([PROMPTS[1]])
    both = Batch.concat([first, second])
    assert list(both.cache[0].shape) == [2, len(PROMPTS[0]), 2, 16] and both.select([1]).cache[0].shape[1] == 5
    got = [c.token_ids for c in llm.generate(PROMPTS, GREEDY)]
    assert got == [trim_at_stop(t) for t in hf_generate(chat_checkpoint("gqa"), PROMPTS)]


@pytest.mark.paddle26
def test_dygraph_engine_generates_as_transformers(chat_checkpoint):
    llm = LLM.from_pretrained(chat_checkpoint("sliding"), engine="dygraph")
    got = [c.token_ids for c in llm.generate(PROMPTS, GREEDY)]
    assert got == [trim_at_stop(t) for t in hf_generate(chat_checkpoint("sliding"), PROMPTS)]


@pytest.mark.paddle26
def test_chat_prompt_and_text_as_transformers(decode_export, chat_checkpoint):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_checkpoint("gqa"))
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "北京在哪里? Paris?"}]
    llm = LLM.from_pretrained(decode_export("gqa"))
    ids = llm.tokenizer.encode_chat(messages)
    assert ids == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    pieces = []
    [out] = llm.generate([ids], SamplingParams(temperature=0, max_new_tokens=24), lambda row, d: pieces.append(d))
    want = trim_at_stop(hf_generate(chat_checkpoint("gqa"), [ids], 24)[0])
    assert out.token_ids == want
    assert out.text == "".join(pieces) == tokenizer.decode(want, skip_special_tokens=True)
    assert out.finish_reason == ("stop" if want[-1] in CHAT_EOS else "length")
    assert all("\ufffd" not in p for p in pieces)


# ------------------------------------------------------------------------------------------ continuous batching
@pytest.mark.paddle26
def test_rows_joining_and_leaving_get_their_lone_tokens(decode_export):
    """A row decoded alone, and the same row prefilled later, joined to a running batch (left-padded to it), and
    left behind when the other row leaves: the same greedy tokens."""
    llm = LLM.from_pretrained(decode_export("gqa"))
    alone = [llm.generate([p], GREEDY)[0].token_ids for p in PROMPTS]
    logits, running = llm.prefill([PROMPTS[0]])
    tokens = {0: [int(logits[0].argmax())]}
    for _ in range(2):  # row 0 runs alone for two steps
        tokens[0].append(int(llm.decode(running, [tokens[0][-1]])[0].argmax()))
    logits, joining = llm.prefill([PROMPTS[1]])
    tokens[1] = [int(logits[0].argmax())]
    running = Batch.concat([running, joining])
    assert running.lengths == [len(PROMPTS[0]) + 2, len(PROMPTS[1])]
    while len(tokens[1]) < NEW_TOKENS:
        logits = llm.decode(running, [tokens[0][-1], tokens[1][-1]])
        tokens[0].append(int(logits[0].argmax()))
        tokens[1].append(int(logits[1].argmax()))
        if len(tokens[0]) == NEW_TOKENS:  # row 0 is done: it leaves
            running = running.select([1])
            while len(tokens[1]) < NEW_TOKENS:
                tokens[1].append(int(llm.decode(running, [tokens[1][-1]])[0].argmax()))
    assert [trim_at_stop(tokens[0]), trim_at_stop(tokens[1])] == alone


@pytest.mark.paddle26
@pytest.mark.parametrize("onednn", [False, None], ids=["one-predictor", "auto"])
def test_batches_kept_side_by_side_keep_their_caches(decode_export, onednn):
    """Three batches of the same shapes, prefilled and decoded in turns: more batches hold predictor outputs than
    there are predictor clones, so runs must not write into a cache a kept batch still holds."""
    llm = LLM.from_pretrained(decode_export("gqa"), onednn=onednn)
    prompts = [[17, 230, 1201, 9, 3050], [5, 919, 2048, 64, 311], [88, 7, 1500, 12, 640]]
    alone = [llm.generate([p], GREEDY)[0].token_ids for p in prompts]
    batches, tokens = [], []
    for p in prompts:
        logits, batch = llm.prefill([p])
        batches.append(batch)
        tokens.append([int(logits[0].argmax())])
    for _ in range(NEW_TOKENS - 1):
        for batch, row in zip(batches, tokens):
            row.append(int(llm.decode(batch, [row[-1]])[0].argmax()))
    assert [trim_at_stop(row) for row in tokens] == alone


# ------------------------------------------------------------------------------------- sampling, stops, streaming
@pytest.mark.paddle26
def test_seeded_sampling_is_reproducible_and_engine_independent(decode_export, chat_checkpoint):
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, repetition_penalty=1.1, seed=7, max_new_tokens=12)
    llm = LLM.from_pretrained(decode_export("gqa"))
    first = [c.token_ids for c in llm.generate(PROMPTS, params)]
    assert first == [c.token_ids for c in llm.generate(PROMPTS, params)]
    assert first == [
        c.token_ids for c in LLM.from_pretrained(chat_checkpoint("gqa"), "dygraph").generate(PROMPTS, params)
    ]
    other = [c.token_ids for c in llm.generate(PROMPTS, params.replace(seed=8))]
    assert other != first


@pytest.mark.paddle26
def test_stop_tokens_and_stop_strings(decode_export, chat_checkpoint):
    llm = LLM.from_pretrained(decode_export("gqa"))
    [free] = llm.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=12))
    stop_id = free.token_ids[4]
    [stopped] = llm.generate([PROMPTS[0]], SamplingParams(temperature=0, stop_token_ids=[stop_id]))
    first = free.token_ids.index(stop_id)
    assert stopped.token_ids == free.token_ids[: first + 1] and stopped.finish_reason == "stop"
    assert stopped.stop_reason == stop_id
    hf = hf_generate(chat_checkpoint("gqa"), [PROMPTS[0]], 12, eos_token_id=stop_id)[0]
    assert stopped.token_ids == trim_at_stop(hf, [stop_id])
    stop_text = free.text[3:6]
    [cut] = llm.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=12, stop=[stop_text]))
    assert cut.text == free.text[: free.text.index(stop_text)] and cut.finish_reason == "stop"
    assert cut.stop_reason == stop_text
    [short] = llm.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=3))
    assert short.token_ids == free.token_ids[:3] and short.finish_reason == "length"


@pytest.mark.paddle26
def test_context_limit(decode_export):
    llm = LLM.from_pretrained(decode_export("gqa"))
    assert llm.max_model_len == 128
    [out] = llm.generate([[5] * 120], SamplingParams(temperature=0))
    assert out.completion_tokens == 8 and out.finish_reason == "length"
    with pytest.raises(EngineError, match="the prompt has 128 tokens; the context holds 128"):
        llm.generate([[5] * 128], SamplingParams(temperature=0))
    with pytest.raises(EngineError, match=r"token id 4096 is outside the vocabulary \[0, 4096\)"):
        llm.prefill([[4096]])
