"""What a `paddle-qwen2` process prints: its own progress and result lines, and the libraries' chatter only when
asked for (`--verbose`, or `PADDLE_QWEN2_LOG=debug` in the environment).

    from paddle_qwen2.console import configure_console
    configure_console(verbose=args.verbose)     # before paddle is imported

Kept free of paddle imports, like `paddle_qwen2.runtime`: most switches only work if set before paddle loads.
Quiet (the default) silences, in this process and (through the environment) in the processes it starts:

- glog lines of paddle's C++ core below ERROR (`W1207 ... eager_utils.cc:...`): `GLOG_minloglevel=2`;
- the `WARNING: OMP_NUM_THREADS set to N, not 1 ... PLEASE USE OMP_NUM_THREADS WISELY.` notice paddle prints to
  `sys.stderr` on import whenever more than one thread is configured: those two lines are dropped;
- INFO records of libraries that log through the root logger (datasets' "PyTorch version ... available."): the
  root logger gets a handler of its own at WARNING before paddle loads, so paddle does not set it to INFO with a
  handler of its own;
- paddlenlp's INFO and DEBUG records (configuration loading, the Trainer's argument table): a filter on its
  "PaddleNLP" logger lets WARNING and above through;
- Python warnings raised in paddle, paddlenlp and setuptools' distutils shim (PIR's per-op `UserWarning`s, "No
  ccache found", "Setuptools is replacing distutils").

The package's own warnings and errors are never filtered, and a setting the user made wins: an environment
variable already set is kept, and with `-W` options or `PYTHONWARNINGS` no warning filter is added. Verbose
changes nothing but exports `PADDLE_QWEN2_LOG=debug`, so that child processes are verbose too.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["LOG_VARIABLE", "configure_console", "verbose_requested"]

LOG_VARIABLE = "PADDLE_QWEN2_LOG"

# environment variables read when paddle loads (a value already set wins)
QUIET_ENVIRONMENT = {"GLOG_minloglevel": "2"}
# top-level packages whose Python warnings are not shown
QUIET_WARNING_PACKAGES = ("paddle", "paddlenlp", "_distutils_hack")
# loggers with a handler of their own (not propagating to the root logger) whose records below WARNING are dropped
QUIET_LOGGERS = ("PaddleNLP",)
# the lines paddle prints on import when OMP_NUM_THREADS > 1 (paddle/base/__init__.py, `__bootstrap__`)
PADDLE_THREAD_NOTICE = ("WARNING: OMP_NUM_THREADS set to ", "PLEASE USE OMP_NUM_THREADS WISELY.")

_configured = False


def verbose_requested(verbose: bool = False) -> bool:
    """True when `verbose` is, or the environment has `PADDLE_QWEN2_LOG=debug` (any case)."""
    return verbose or os.environ.get(LOG_VARIABLE, "").strip().lower() == "debug"


def configure_console(verbose: bool = False) -> bool:
    """Set up what this process prints (see the module docstring); call it before paddle is imported, once per
    process (later calls change nothing). Returns whether the process is verbose."""
    global _configured
    if verbose_requested(verbose):
        os.environ[LOG_VARIABLE] = "debug"  # inherited by the processes this one starts
        _configured = True
        return True
    if _configured:
        return False
    _configured = True
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if not sys.warnoptions:  # -W options and PYTHONWARNINGS are the user's
        pattern = "|".join(QUIET_WARNING_PACKAGES)
        warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")
    _own_root_logger()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).addFilter(_warning_and_above)
    if "paddle" not in sys.modules:
        sys.stderr = _WithoutThreadNotice(sys.stderr)
    return False


def _warning_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _own_root_logger() -> None:
    """A stderr handler on the root logger, which stays at WARNING: paddle configures the root logger (INFO, a
    handler of its own) on import only when it has no handler yet."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    root.addHandler(handler)


class _WithoutThreadNotice:
    """`sys.stderr` until paddle has printed its OMP_NUM_THREADS notice: drops the notice's two lines (`print`
    writes each as the text, then the newline), then makes the original stream `sys.stderr` again. Everything
    else passes through unchanged."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._newline_pending = False
        self._last_line = False

    def write(self, text: str) -> int:
        if self._newline_pending and text == "\n":
            self._newline_pending = False
            if self._last_line and sys.stderr is self:
                sys.stderr = self._stream
            return len(text)
        self._newline_pending = text.startswith(PADDLE_THREAD_NOTICE)
        if self._newline_pending:
            self._last_line = text.startswith(PADDLE_THREAD_NOTICE[-1])
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
