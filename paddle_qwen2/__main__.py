"""`python -m paddle_qwen2 ...`: the `paddle-qwen2` command line."""

from .cli import main

raise SystemExit(main())
