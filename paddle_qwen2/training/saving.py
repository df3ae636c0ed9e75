"""The final model folder of a training run: `save_pretrained` (safetensors), the tokenizer files and a
generation_config.json, written into `<folder>.partial` and renamed into place when complete."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..conversion.names import TOKENIZER_FILES

__all__ = ["TOKENIZER_FILES", "copy_tokenizer_files", "save_final", "write_generation_config"]


def save_final(model, final_dir: Path, tokenizer_src: Path, tokenizer) -> None:
    """`save_pretrained` (safetensors) into a temp folder renamed to `final_dir`, with the tokenizer files of
    `tokenizer_src`; a causal LM also gets a generation_config.json that stops at `<|im_end|>`."""
    from .. import Qwen2ForCausalLM
    from ..tokenizer import ENDOFTEXT, IM_END

    final_dir = Path(final_dir)
    tmp = final_dir.with_name(final_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config
    config.use_cache = True
    model.save_pretrained(str(tmp), safe_serialization=True)
    copy_tokenizer_files(Path(tokenizer_src), tmp, tokenizer)
    if isinstance(model, Qwen2ForCausalLM):  # a chat model stops at <|im_end|> (and <|endoftext|>)
        stops = [tokenizer.convert_tokens_to_ids(t) for t in (IM_END, ENDOFTEXT) if t in tokenizer.get_vocab()]
        write_generation_config(tmp, stops, tokenizer.pad_token_id, getattr(config, "bos_token_id", None))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)


def copy_tokenizer_files(src: Path, dst: Path, tokenizer) -> None:
    """The Qwen2 tokenizer files of `src` copied as they are (HF-readable), else the tokenizer's own save."""
    src, dst = Path(src), Path(dst)
    has_vocab = (src / "tokenizer.json").is_file() or (src / "vocab.json").is_file()
    if (src / "tokenizer_config.json").is_file() and has_vocab:
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy(src / name, dst / name)
    else:
        tokenizer.save_pretrained(str(dst))


def write_generation_config(
    folder: Path, eos_token_id: int | list[int], pad_token_id: int, bos_token_id: int | None = None
) -> None:
    """`folder/generation_config.json` that paddlenlp and transformers both read: greedy, the given stop ids."""
    config = {
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "do_sample": False,
    }
    (Path(folder) / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")
