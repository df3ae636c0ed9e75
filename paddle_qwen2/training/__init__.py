"""Fine-tuning with paddlenlp's Trainer (`paddle-qwen2 finetune`). Nothing is imported here: import the module
you need (`options` and `saving` load no paddle at import; `callbacks`, `data`, `finetune` and `lora` do).

    options     `FinetuneOptions`: a run's settings, defaults and checks (no paddle import)
    finetune    `run(options)`: datasets, model, Trainer, summary.json; `training_arguments`, ...
    data        SFT chats and classification files -> datasets and collators; `DataError`
    embedding   `--task embedding`: retrieval rows, their dataset and collator, the InfoNCE wrapper, retrieval eval
    callbacks   `JsonlLogger` (train_log.jsonl), `CheckpointMarker` (checkpoint_complete.json), `read_log`,
                `last_complete_checkpoint`
    lora        `apply_lora`, `merge_lora` (paddlenlp.peft)
    saving      the final model folder: `save_final`, `copy_tokenizer_files`, `write_generation_config`
"""
