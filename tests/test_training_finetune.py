"""paddle_qwen2.training.finetune (with .lora and .callbacks): SFT lowers the loss, LoRA trains adapters only and
merges exactly, a killed run resumes with the same loss curve, sequence classification reports accuracy, and the
results convert to HF."""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

pytestmark = pytest.mark.paddle26

from conftest import CAPITALS, kill_at_first_checkpoint
from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification
from paddle_qwen2.cli import finetune
from paddle_qwen2.conversion import convert_checkpoint
from paddle_qwen2.tokenizer import load_tokenizer, save_qwen2_tokenizer, train_qwen2_bpe
from paddle_qwen2.training.callbacks import read_log
from paddle_qwen2.training.data import DataCollatorForSFT, build_sft_dataset
from paddle_qwen2.training.lora import apply_lora, merge_lora


def _chats():
    chats = [
        {"prompt": f"What is the capital of {c}?", "response": f"The capital of {c} is {cap}."} for c, cap in CAPITALS
    ]
    chats += [
        {
            "messages": [
                {"role": "user", "content": f"Where is {cap}?"},
                {"role": "assistant", "content": f"{cap} is in {c}."},
            ]
        }
        for c, cap in CAPITALS
    ]
    return chats


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny random Qwen2 (Paddle safetensors) with a Qwen2-format tokenizer, chat data and sentiment data."""
    root = tmp_path_factory.mktemp("finetune")
    chats = _chats()
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in chats))
    texts = [c.get("prompt", "") + " " + c.get("response", "") for c in chats] + ["good great fine bad awful poor"] * 5
    model_dir = root / "base"
    save_qwen2_tokenizer(train_qwen2_bpe(texts * 5, vocab_size=350), str(model_dir))
    tok = load_tokenizer(str(model_dir))
    eos = tok.eos_token_id
    config = Qwen2Config(
        vocab_size=len(tok) + 5,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    paddle.seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(model_dir), safe_serialization=True)
    words, topics = ("good", "great", "fine", "bad", "awful", "poor"), ("day", "food", "trip")
    rows = ["text,label"] + [
        f"{w} {t}" + (f",{1 if w in ('good', 'great', 'fine') else 0}") for w in words for t in topics
    ]
    sentiment = root / "sentiment.csv"
    sentiment.write_text("\n".join(rows) + "\n")
    return {"root": root, "model": model_dir, "chats": data, "sentiment": sentiment, "tokenizer": tok}


def sft_args(ws, out, *extra):
    return [
        "--model",
        str(ws["model"]),
        "--train-file",
        str(ws["chats"]),
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
        "--learning-rate",
        "1e-2",
        "--logging-steps",
        "1",
        "--max-length",
        "128",
        "--quiet",
        *extra,
    ]


def mean_sft_loss(model, ws) -> float:
    dataset, _ = build_sft_dataset(ws["tokenizer"], ws["chats"], max_length=128)
    batch = DataCollatorForSFT(ws["tokenizer"].pad_token_id)([dataset[i] for i in range(len(dataset))])
    model.eval()
    with paddle.no_grad():
        return float(model(**batch, return_dict=True).loss)


def hf_logits(folder, ids, head="Qwen2ForCausalLM"):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = getattr(transformers, head).from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def test_sft_lowers_the_loss_and_exports_to_hf(workspace, tmp_path):
    out = tmp_path / "sft"
    before = mean_sft_loss(Qwen2ForCausalLM.from_pretrained(str(workspace["model"])), workspace)
    summary = finetune.main(sft_args(workspace, out, "--max-steps", "24", "--export-hf"))
    tuned = Qwen2ForCausalLM.from_pretrained(summary["final"])
    after = mean_sft_loss(tuned, workspace)
    assert after < 0.6 * before, (before, after)
    log = read_log(out / "train_log.jsonl")
    assert sorted(log) == list(range(1, 25))
    assert all("learning_rate" in r for r in log.values()) and log[24]["learning_rate"] < log[1]["learning_rate"]
    assert np.mean([log[s]["loss"] for s in (22, 23, 24)]) < log[1]["loss"] - 1.0
    # the saved model is the trained one, and its HF conversion gives the same logits
    ids = [
        workspace["tokenizer"].apply_chat_template(
            [{"role": "user", "content": "Where is Rome?"}], add_generation_prompt=True
        )
    ]
    tuned.eval()
    ours = tuned(paddle.to_tensor(ids), return_dict=True).logits.numpy()
    np.testing.assert_allclose(hf_logits(summary["final_hf"], ids), ours, atol=1e-4, rtol=0)
    generation = json.loads((Path(summary["final"]) / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [
        workspace["tokenizer"].convert_tokens_to_ids("<|im_end|>"),
        workspace["tokenizer"].eos_token_id,
    ]


def test_lora_merge_gives_the_same_outputs(workspace):
    paddle.seed(1)
    base = Qwen2ForCausalLM.from_pretrained(str(workspace["model"]))
    keys = sorted(base.state_dict())
    lora = apply_lora(base, rank=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"])
    trainable = {n for n, p in lora.named_parameters() if not p.stop_gradient}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert len(trainable) == 2 * 3 * base.config.num_hidden_layers
    for name, param in lora.named_parameters():  # non-zero B so the adapters change the output
        if "lora_B" in name:
            param.set_value(paddle.normal(0.0, 0.5, param.shape))
    ids = paddle.to_tensor([[5, 17, 42, 99, 3, 250]])
    lora.eval()
    with paddle.no_grad():
        adapted = lora(ids, return_dict=True).logits.numpy()
        merged_model = merge_lora(lora)
        merged_model.eval()
        merged = merged_model(ids, return_dict=True).logits.numpy()
    plain = Qwen2ForCausalLM.from_pretrained(str(workspace["model"]))
    plain.eval()
    assert np.abs(adapted - plain(ids, return_dict=True).logits.numpy()).max() > 1e-2  # the adapters matter
    np.testing.assert_allclose(merged, adapted, atol=1e-5, rtol=0)
    assert sorted(merged_model.state_dict()) == keys  # plain Linear layers again, no extra bias


def test_lora_finetune_trains_only_adapters(workspace, tmp_path):
    out = tmp_path / "lora"
    summary = finetune.main(
        sft_args(workspace, out, "--max-steps", "6", "--lora", "--lora-rank", "4", "--lora-targets", "q_proj", "v_proj")
    )
    cfg = Qwen2Config.from_pretrained(str(workspace["model"]))
    q, kv = cfg.num_attention_heads * cfg.attention_head_dim, cfg.num_key_value_heads * cfg.attention_head_dim
    expected = cfg.num_hidden_layers * 4 * ((cfg.hidden_size + q) + (cfg.hidden_size + kv))
    assert summary["parameters"]["trainable"] == expected
    base = Qwen2ForCausalLM.from_pretrained(str(workspace["model"])).state_dict()
    tuned = Qwen2ForCausalLM.from_pretrained(summary["final"]).state_dict()
    assert sorted(base) == sorted(tuned)
    changed = {k for k in base if not np.array_equal(base[k].numpy(), tuned[k].numpy())}
    assert changed and all(".q_proj.weight" in k or ".v_proj.weight" in k for k in changed)
    assert (out / "lora-adapter").is_dir()


def test_lora_runs_are_reproducible(workspace, tmp_path):
    """The adapters are drawn from `--seed`, whatever the random state before the run."""
    args = ("--max-steps", "3", "--lora", "--lora-rank", "4")
    logs = []
    for name in ("first", "second"):
        paddle.seed(len(name))  # a different random state before each run
        finetune.main(sft_args(workspace, tmp_path / name, *args))
        logs.append({step: r["loss"] for step, r in read_log(tmp_path / name / "train_log.jsonl").items()})
    assert sorted(logs[0]) == [1, 2, 3] and logs[0] == logs[1]


@pytest.mark.slow
def test_resume_after_kill_continues_the_same_loss_curve(workspace, tmp_path):
    steps = "120"
    common = ["--max-steps", steps, "--save-steps", "5", "--save-total-limit", "3"]
    reference = tmp_path / "uninterrupted"
    finetune.main(sft_args(workspace, reference, *common))
    ref_log = read_log(reference / "train_log.jsonl")

    killed = tmp_path / "killed"
    checkpoint = kill_at_first_checkpoint(sft_args(workspace, killed, *common), killed)
    k = int(checkpoint.name.split("-")[1])
    assert k < int(steps), "the kill came after training finished"

    summary = finetune.main(sft_args(workspace, killed, *common, "--resume"))
    assert summary["steps"] == int(steps)
    log = read_log(killed / "train_log.jsonl")
    assert log[k + 1]["loss"] == pytest.approx(ref_log[k + 1]["loss"], abs=1e-6, rel=1e-6)
    for step in range(k + 1, int(steps) + 1):
        assert log[step]["loss"] == pytest.approx(ref_log[step]["loss"], abs=1e-5, rel=1e-5), step
        assert log[step]["learning_rate"] == pytest.approx(ref_log[step]["learning_rate"])
    assert log[k + 1]["loss"] != pytest.approx(ref_log[1]["loss"], abs=1e-3)  # it did not start over


def test_sequence_classification_reports_accuracy_and_exports(workspace, tmp_path):
    out = tmp_path / "cls"
    summary = finetune.main(
        [
            "--task",
            "seq_cls",
            "--model",
            str(workspace["model"]),
            "--train-file",
            str(workspace["sentiment"]),
            "--eval-file",
            str(workspace["sentiment"]),
            "--num-labels",
            "2",
            "--output-dir",
            str(out),
            "--max-steps",
            "40",
            "--batch-size",
            "6",
            "--learning-rate",
            "1e-2",
            "--logging-steps",
            "5",
            "--eval-steps",
            "20",
            "--quiet",
            "--export-hf",
        ]
    )
    assert summary["eval_accuracy"] >= 0.9, summary
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_accuracy" in r][:2] == [20, 40]
    model = Qwen2ForSequenceClassification.from_pretrained(summary["final"])
    model.eval()
    tok = workspace["tokenizer"]
    ids = [tok("good trip")["input_ids"]]
    ours = model(paddle.to_tensor(ids), return_dict=True).logits.numpy()
    hf = hf_logits(summary["final_hf"], ids, "Qwen2ForSequenceClassification")
    np.testing.assert_allclose(hf, ours, atol=1e-4, rtol=0)


def test_bad_classification_label_stops_training(workspace, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood day,1\nbad day,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: label 2 is outside \[0, num_labels=2\)"):
        finetune.main(
            [
                "--task",
                "seq_cls",
                "--model",
                str(workspace["model"]),
                "--train-file",
                str(bad),
                "--num-labels",
                "2",
                "--output-dir",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )


def test_hf_checkpoint_is_converted_first(workspace, tmp_path):
    hf = tmp_path / "hf"
    convert_checkpoint(workspace["model"], hf, to_paddle=False, progress=False)
    out = tmp_path / "from-hf"
    args = sft_args(workspace, out, "--max-steps", "2")
    args[args.index("--model") + 1] = str(hf)
    summary = finetune.main(args)
    assert (out / "base-paddle" / "model.safetensors").is_file() and summary["steps"] == 2


def test_resume_from_a_path_that_is_no_checkpoint(workspace, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Trainer checkpoint"):
        finetune.main(sft_args(workspace, tmp_path / "out", "--max-steps", "2", "--resume", str(tmp_path)))
