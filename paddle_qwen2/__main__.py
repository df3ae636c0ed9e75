"""`python -m paddle_qwen2 ...`: the `paddle-qwen2` command line."""

from .cli import main

if __name__ == "__main__":  # not when a spawned child (the serving engine) imports it as __mp_main__
    raise SystemExit(main())
