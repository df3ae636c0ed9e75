"""paddle_qwen2.cli.finetune: the shipped configs parse, every option reaches the Trainer, bad options stop."""

import json
from pathlib import Path

import paddle
import pytest

from paddle_qwen2.cli.finetune import parse_args
from paddle_qwen2.training.finetune import training_arguments

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ["--model", "model-dir", "--train-file", "data.jsonl"]


@pytest.mark.parametrize("name", ["finetune_sft", "finetune_lora", "finetune_seqcls"])
def test_shipped_configs_parse(name):
    args = parse_args(["--config", str(REPO / "configs" / f"{name}.json")])
    assert args.task == ("seq_cls" if name == "finetune_seqcls" else "sft")
    assert (REPO / args.train_file).is_file() and args.lora == (name == "finetune_lora")


@pytest.mark.paddle26
def test_options_reach_the_trainer(tmp_path):
    args = parse_args(
        [
            *REQUIRED,
            "--gradient-accumulation-steps",
            "3",
            "--weight-decay",
            "0.1",
            "--max-grad-norm",
            "0.5",
            "--warmup-steps",
            "7",
            "--lr-scheduler",
            "cosine",
            "--save-total-limit",
            "4",
            "--eval-steps",
            "9",
            "--seed",
            "5",
            "--quiet",
            "--amp-level",
            "O2",
        ]
    )
    targs = training_arguments(args, tmp_path, has_eval=True)
    assert (targs.gradient_accumulation_steps, targs.weight_decay, targs.max_grad_norm, targs.warmup_steps) == (
        3,
        0.1,
        0.5,
        7,
    )
    assert getattr(targs.lr_scheduler_type, "value", targs.lr_scheduler_type) == "cosine"
    assert targs.save_total_limit == 4 and targs.seed == 5
    assert targs.eval_steps == 9 and getattr(targs.evaluation_strategy, "value", None) == "steps" and targs.disable_tqdm
    assert targs.fp16_opt_level == "O2" and not targs.bf16 and not targs.fp16
    assert targs.output_dir == str(tmp_path / "checkpoints")


def test_bad_options(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"task": "sft", "learning_rat": 1e-3}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])
    assert "unknown option(s) ['learning_rat']" in capsys.readouterr().err
    if not paddle.is_compiled_with_cuda():
        with pytest.raises(SystemExit):
            parse_args([*REQUIRED, "--bf16"])
        assert "need a GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args([*REQUIRED, "--task", "seq_cls", "--lora"])


def test_command_line_wins_over_config_and_paths_stay_as_written(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": "examples/model", "train_file": "d.jsonl", "max_steps": 7, "lora": True}))
    args = parse_args(["--config", str(config), "--max-steps", "3"])
    assert (args.model, args.train_file, args.max_steps, args.lora) == ("examples/model", "d.jsonl", 3, True)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required: --model, --train-file"),
        (["--model", "m"], "required: --train-file"),
        (["--train-file", "d"], "required: --model"),
    ],
)
def test_model_and_train_file_are_required(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
