"""`FinetuneOptions`: every setting of a fine-tuning run, with its default and its checks (no paddle import).

    from paddle_qwen2.training.finetune import run
    from paddle_qwen2.training.options import FinetuneOptions

    summary = run(FinetuneOptions(model="examples/model", train_file="chats.jsonl", max_steps=50, lora=True))

`paddle-qwen2 finetune` (`paddle_qwen2.cli.finetune`) builds the same object from its command line and its
`--config` JSON file (keys: these field names); each field is the option of the same name with `-` for `_`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..embedding.folder import POOLING_MODES
from ..errors import PaddleQwen2Error

__all__ = [
    "AMP_LEVELS",
    "DEFAULT_MAX_LENGTH",
    "LORA_TARGETS",
    "LR_SCHEDULERS",
    "POOLINGS",
    "REQUIRED",
    "TASKS",
    "FinetuneOptions",
    "OptionsError",
    "parse_dimensions",
]

TASKS = ("sft", "seq_cls", "embedding")
LR_SCHEDULERS = ("linear", "cosine", "constant")
AMP_LEVELS = ("O1", "O2")
POOLINGS = ("last", *POOLING_MODES)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REQUIRED = ("model", "train_file")
DEFAULT_MAX_LENGTH = 256


class OptionsError(PaddleQwen2Error):
    """A fine-tuning option that is missing, out of range or does not fit the others; the message names it."""


@dataclass
class FinetuneOptions:
    """The settings of a fine-tuning run (`paddle-qwen2 finetune --help` describes each one). `check()` validates
    them and fills the task-dependent defaults (`max_length`, `matryoshka_dims`)."""

    model: str | None = None  # Paddle or HF checkpoint folder; embedding: also a sentence-transformers folder
    train_file: str | None = None
    task: str = "sft"
    eval_file: str | None = None
    output_dir: str = "output/finetune"
    max_length: int | None = None  # None: DEFAULT_MAX_LENGTH; embedding: the model folder's max_seq_length
    packing: bool = False
    num_labels: int = 2
    # --task embedding
    query_prompt: str | None = None
    passage_prompt: str | None = None
    pooling: str | None = None
    bidirectional: bool = False
    temperature: float = 0.02
    num_negatives: int = 3
    matryoshka_dims: list[int] | str | None = None  # [32, 16] or "32,16"
    # LoRA
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # schedule
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int = 2
    eval_steps: int | None = None
    # run
    resume: str | None = None  # "last": the newest complete checkpoint in OUTPUT/checkpoints; else a path
    seed: int = 42
    bf16: bool = False
    fp16: bool = False
    amp_level: str = "O1"
    export_hf: str | None = None  # "final-hf": OUTPUT/final-hf; else a path
    quiet: bool = False

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def check(self) -> FinetuneOptions:
        """Validates the options (OptionsError naming the option) and fills the task-dependent defaults; returns
        `self`. Running it twice changes nothing."""
        missing = ["--" + name.replace("_", "-") for name in REQUIRED if getattr(self, name) is None]
        if missing:
            raise OptionsError(f"required option(s) missing: {', '.join(missing)}")
        for name, allowed in (("task", TASKS), ("lr_scheduler", LR_SCHEDULERS), ("amp_level", AMP_LEVELS)):
            value = getattr(self, name)
            if value not in allowed:
                raise OptionsError(f"--{name.replace('_', '-')} must be one of {list(allowed)}, got {value!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise OptionsError(f"--pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if self.bf16 and self.fp16:
            raise OptionsError("--bf16 and --fp16 are exclusive")
        if (self.bf16 or self.fp16) and not _has_cuda():
            raise OptionsError(
                "--bf16 / --fp16 need a GPU build of Paddle (Paddle has no bfloat16 matmul on CPU); "
                "train in fp32 on CPU"
            )
        if self.lora and self.task == "seq_cls":
            raise OptionsError("--lora is supported for --task sft and --task embedding")
        if self.task == "embedding":
            self._check_embedding()
        elif self.max_length is None:
            self.max_length = DEFAULT_MAX_LENGTH
        return self

    def _check_embedding(self) -> None:
        unused = {"--packing": self.packing, "--export-hf": self.export_hf, "--eval-steps": self.eval_steps}
        for name, value in unused.items():
            if value:
                raise OptionsError(f"{name} does not apply to --task embedding")
        if self.temperature <= 0:
            raise OptionsError(f"--temperature must be positive, got {self.temperature}")
        if self.num_negatives < 0:
            raise OptionsError(f"--num-negatives must be >= 0, got {self.num_negatives}")
        if self.max_length is not None and self.max_length <= 0:
            raise OptionsError(f"--max-length must be positive, got {self.max_length}")
        try:
            self.matryoshka_dims = parse_dimensions(self.matryoshka_dims or [])
        except OptionsError as exc:
            raise OptionsError(f"--matryoshka-dims: {exc}") from None


def parse_dimensions(value: str | list) -> list[int]:
    """`"32,16"` (command line) or `[32, 16]` (--config) -> `[32, 16]`; OptionsError unless positive integers."""
    items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
    try:
        dims = [int(v) for v in items]
    except ValueError:
        raise OptionsError(f"expected comma-separated integers, got {value!r}") from None
    if any(d <= 0 for d in dims):
        raise OptionsError(f"dimensions must be positive, got {value!r}")
    return dims


def _has_cuda() -> bool:
    import paddle  # only for --bf16 / --fp16: keeps this module free of paddle otherwise

    return paddle.is_compiled_with_cuda()
