"""Cleanup of the tracing state Paddle's dy2static leaves behind when a `paddle.jit.to_static` trace fails.

While a program is traced, dy2static records the tensors it turns into parameters, and their `Value`s in the
program, in module-level tables (`paddle.jit.dy2static.parameter_recorder`) keyed by `id(program)`; it removes a
program's entry only when the trace succeeds. After a failed trace the entry stays. Once that program is freed
(it is cyclic garbage through the exception's traceback), a later program may be allocated at the same address:
it then inherits the stale entry and becomes a program whose parameters are `Value`s of the freed one, and Paddle
3.x crashes reading their names (SIGSEGV / SIGFPE in `pir_partial_program.get_value_name`). Whether it happens
depends on when the garbage collector runs and what the allocator returns.

`forget_failed_traces()` wraps a trace and drops the entries it added if it raises; `forget_unfinished_traces()`
drops every entry, for points where no trace is running (between tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["forget_failed_traces", "forget_unfinished_traces"]


def _tables() -> list[dict]:
    """The `{id(program): ...}` tables of dy2static's parameter recorder and in-place map (none on a Paddle without
    them)."""
    try:
        from paddle.jit.dy2static import parameter_recorder
    except ImportError:
        return []
    tables = []
    for name in ("_global_parameter_recorder", "_global_inplace_map"):
        owner = getattr(parameter_recorder, name, None)
        for attr in ("params_dict", "tensor2value"):
            table = getattr(owner, attr, None)
            if isinstance(table, dict):
                tables.append(table)
    return tables


def _drop(keep: list[set]) -> None:
    for table, kept in zip(_tables(), keep):
        for key in set(table) - kept:
            del table[key]


@contextmanager
def forget_failed_traces() -> Iterator[None]:
    """Run the body (a `to_static` trace, a `paddle.jit.save`); if it raises, drop the dy2static entries of the
    programs it started tracing, then re-raise."""
    keep = [set(table) for table in _tables()]
    try:
        yield
    except BaseException:
        _drop(keep)
        raise


def forget_unfinished_traces() -> None:
    """Drop every dy2static entry: call only where no trace is running (they are all left by failed traces)."""
    _drop([set() for _ in _tables()])
