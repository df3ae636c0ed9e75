"""Constrained ("guided") decoding: answers that are any JSON object, follow a JSON schema, or are Qwen2.5's
hermes tool calls, enforced by masking the logits each step with the llguidance grammar engine.

    spec = GuidedSpec.json_schema({"type": "object", ...}, field="response_format.json_schema.schema")
    params = SamplingParams(temperature=0.7, guided=spec)   # the spec is checked when it is built
    [out] = llm.generate([prompt_ids], params)               # out.text parses and validates against the schema

`GuidedSpec` is what to enforce, as text (a small picklable dataclass: it crosses the pipe to the server's engine
process); its constructors check the schema at once, so a feature the engine cannot enforce is a
`GuidedDecodingError` naming the field and the feature before anything is queued, never an unconstrained answer.
`GuidedState` is one sequence's matcher, built from a spec and the `ChatTokenizer`: `mask` puts -inf on every token
the grammar does not allow next (and on the padded rows of a model vocabulary larger than the tokenizer's), `advance`
consumes the chosen token. Once the grammar is complete only the eos tokens are allowed, so the answer ends with
finish reason "stop"; `max_new_tokens` still cuts it ("length").

JSON is written on one line with at most one space after each `,` and `:` (`{"a": 1, "b": [2, 3]}` or compact), so a
weak model cannot loop on whitespace. Object properties come in the schema's order. Tool calls are
`<tool_call>\\n{"name": "<tool>", "arguments": {...}}\\n</tool_call>` blocks separated by a newline (the tags are the
tokenizer's own `<tool_call>` / `</tool_call>` tokens when it has them, as Qwen2.5's does).

llguidance is imported only when a spec is built: unconstrained generation never loads it.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PaddleQwen2Error

__all__ = ["GuidedDecodingError", "GuidedSpec", "GuidedState", "JSON_WHITESPACE"]

# llguidance's JSON options: no free whitespace, one optional space after the separators (regexes)
JSON_WHITESPACE = {"whitespace_flexible": False, "item_separator": ", ?", "key_separator": ": ?"}
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_ENGINE_KEY = "x-guidance"  # llguidance's own options inside a schema: set here, never by the request
_GRAMMARS_PER_TOKENIZER = 64  # compiled matchers kept per tokenizer (least recently used dropped)


class GuidedDecodingError(PaddleQwen2Error):
    """A guided-decoding request that cannot be enforced; `param` is the request field, the message names it and
    the feature."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def _llguidance():
    import llguidance

    return llguidance


# ------------------------------------------------------------------------------------------------ the spec
@dataclass(frozen=True)
class GuidedSpec:
    """What to enforce: `kind` ("json_object", "json_schema" or "tool_calls"), the Lark grammar text (llguidance's
    dialect; tool-call tags are the rules `tool_open` / `tool_close`, defined per tokenizer), and the request field it
    came from (named in errors)."""

    kind: str
    grammar: str
    field: str

    @classmethod
    def json_object(cls, field: str = "response_format") -> GuidedSpec:
        """Any JSON object."""
        return cls("json_object", "start: " + _json_rule({"type": "object"}), field)

    @classmethod
    def json_schema(cls, schema: dict, field: str = "response_format.json_schema.schema") -> GuidedSpec:
        """A JSON value valid for `schema` (a JSON-schema object). GuidedDecodingError naming `field` and the
        feature for a schema the engine cannot enforce."""
        _check_schema(schema, field)
        return cls("json_schema", "start: " + _json_rule(schema), field)

    @classmethod
    def tool_calls(
        cls, tools: list[dict], name: str | None = None, field: str = "tool_choice", parallel: bool = True
    ) -> GuidedSpec:
        """One or more hermes tool-call blocks (`name` None: OpenAI's tool_choice "required"; exactly one with
        `parallel` False, OpenAI's `parallel_tool_calls: false`), or exactly one calling the tool `name`. `tools` are
        OpenAI tool definitions (`{"type": "function", "function": {...}}`) or bare function dicts (`{"name",
        "parameters"?}`); a function without parameters takes `{}`."""
        functions = _functions(tools, field)
        if name is not None:
            if name not in functions:
                known = ", ".join(sorted(functions)) or "none"
                raise GuidedDecodingError(field, f"no tool named {name!r} (the tools are: {known})")
            functions = {name: functions[name]}
        rules = []
        for i, (tool, parameters) in enumerate(functions.items()):
            name_key, name_value, arguments_key, close = (
                json.dumps(text) for text in ('{"name"', json.dumps(tool), '"arguments"', "}")
            )
            rules.append(f"call_{i}: {name_key} KEY_SEP {name_value} ITEM_SEP {arguments_key} KEY_SEP args_{i} {close}")
            rules.append(f"args_{i}: " + _json_rule(parameters))
        lines = [
            "start: block" if name is not None or not parallel else 'start: block ("\\n" block)*',
            'block: tool_open "\\n" call "\\n" tool_close',
            "call: " + " | ".join(f"call_{i}" for i in range(len(functions))),
            *rules,
            "KEY_SEP: /: ?/",
            "ITEM_SEP: /, ?/",
        ]
        spec = cls("tool_calls", "\n".join(lines) + "\n", field)
        _check_grammar(spec.grammar + _tag_rules(False), field)
        return spec


def _json_rule(schema: dict) -> str:
    """A Lark `%json` body for `schema` with this module's whitespace options."""
    return "%json " + json.dumps({**schema, _ENGINE_KEY: JSON_WHITESPACE})


def _check_schema(schema: Any, field: str) -> None:
    """GuidedDecodingError naming `field` for a schema that is not an object or that llguidance cannot enforce
    exactly (unsupported keywords and formats, unsatisfiable constraints, bad regexes, unresolvable $refs)."""
    if not isinstance(schema, dict):
        raise GuidedDecodingError(field, f"a JSON schema must be an object, got {json.dumps(schema)[:80]}")
    if _ENGINE_KEY in schema:
        raise GuidedDecodingError(field, f"the key {_ENGINE_KEY!r} (the grammar engine's own options) is not accepted")
    llg = _llguidance()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, overrides={**JSON_WHITESPACE, "lenient": False})
    except (ValueError, TypeError) as exc:
        raise GuidedDecodingError(field, f"not a JSON schema: {exc}") from None
    _raise_problems(grammar, field, "this schema cannot be enforced")


def _check_grammar(lark: str, field: str) -> None:
    _raise_problems(_llguidance().LLMatcher.grammar_from_lark(lark), field, "this grammar cannot be enforced")


def _raise_problems(grammar: str, field: str, what: str) -> None:
    """Errors and warnings (a warning means something would go unenforced) of the grammar, without a tokenizer."""
    llg = _llguidance()
    limits = llg.LLParserLimits(verbose_errors=False)
    failed, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, None, limits=limits)
    problems = [m.strip() for m in messages if "no tokenizer" not in m]
    if failed or problems:
        raise GuidedDecodingError(field, f"{what}: {'; '.join(problems)}")


def _functions(tools: Any, field: str) -> dict[str, dict]:
    """{name: parameters schema} of OpenAI tool definitions, each schema checked."""
    if not isinstance(tools, list) or not tools:
        raise GuidedDecodingError(field, "forcing a tool call needs a non-empty list of tools")
    out: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        path = f"tools[{i}]"
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(tool, dict) and "function" in tool:
            path += ".function"
        if not isinstance(function, dict):
            raise GuidedDecodingError(field, f"{path} must be a tool definition (an object), got {tool!r:.80}")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise GuidedDecodingError(field, f"{path}.name must be 1 to 64 of a-z, A-Z, 0-9, _, . and -, got {name!r}")
        if name in out:
            raise GuidedDecodingError(field, f"{path}.name: {name!r} is defined twice")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}, "additionalProperties": False}
        try:
            _check_schema(parameters, f"{path}.parameters")
        except GuidedDecodingError as exc:
            raise GuidedDecodingError(field, str(exc)) from None
        out[name] = parameters
    return out


def _tag_rules(special: bool) -> str:
    """The `tool_open` / `tool_close` rules: the tokenizer's special tokens, else the tags as text."""
    if special:
        return f"tool_open: {TOOL_OPEN}\ntool_close: {TOOL_CLOSE}\n"
    return f"tool_open: {json.dumps(TOOL_OPEN)}\ntool_close: {json.dumps(TOOL_CLOSE)}\n"


# ------------------------------------------------------------------------------------------ per tokenizer
class _Compiled:
    """llguidance's view of one `ChatTokenizer` (its vocabulary and eos ids) and the matchers compiled for it."""

    def __init__(self, tokenizer) -> None:
        llg = _llguidance()
        eos = list(tokenizer.eos_token_ids)
        if not eos:
            raise GuidedDecodingError("guided", "the tokenizer has no eos token: a guided answer could not end")
        try:
            self.tokenizer = llg.LLTokenizer(tokenizer.backend.to_str(), eos_token=eos)
        except Exception as exc:  # the Rust library raises its own exception types
            raise GuidedDecodingError("guided", f"the grammar engine cannot use this tokenizer: {exc}") from None
        self.vocab_size = int(self.tokenizer.vocab_size)
        self.tag_rules = _tag_rules(all(self._is_special(tag) for tag in (TOOL_OPEN, TOOL_CLOSE)))
        self.matchers: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def _is_special(self, text: str) -> bool:
        ids = self.tokenizer.tokenize_str(text, parse_special=True)
        return len(ids) == 1 and self.tokenizer.is_special_token(ids[0])

    def matcher(self, spec: GuidedSpec):
        """A fresh matcher of `spec` (a copy of the cached compiled one)."""
        grammar = spec.grammar + (self.tag_rules if spec.kind == "tool_calls" else "")
        with self.lock:
            template = self.matchers.pop(grammar, None)
            if template is None:
                llg = _llguidance()
                template = llg.LLMatcher(self.tokenizer, llg.LLMatcher.grammar_from_lark(grammar))
                if template.is_error():
                    raise GuidedDecodingError(spec.field, f"cannot be enforced: {template.get_error()}")
            self.matchers[grammar] = template
            while len(self.matchers) > _GRAMMARS_PER_TOKENIZER:
                self.matchers.popitem(last=False)
        return template.deep_copy()


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILED_LOCK = threading.Lock()


def _compiled(tokenizer) -> _Compiled:
    with _COMPILED_LOCK:
        compiled = _COMPILED.get(tokenizer)
        if compiled is None:
            compiled = _COMPILED[tokenizer] = _Compiled(tokenizer)
        return compiled


# ------------------------------------------------------------------------------------------ per sequence
class GuidedState:
    """The grammar state of one sequence, compiled on first use (so a sequence built only to be sent elsewhere, as
    the server's HTTP process does, costs nothing; the first use per tokenizer builds llguidance's view of its
    vocabulary). `error` is set if the engine cannot go on (a tokenizer it cannot use, a resource limit): `mask`
    then leaves the logits alone and the sequence ends at once with finish reason "error"."""

    def __init__(self, spec: GuidedSpec, tokenizer) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.compiled: _Compiled | None = None
        self._matcher = None
        self.error: str | None = None

    def _get_matcher(self):
        """The matcher (built on first call); None once `error` is set."""
        if self._matcher is None and self.error is None:
            try:
                self.compiled = _compiled(self.tokenizer)
                self._matcher = self.compiled.matcher(self.spec)
            except GuidedDecodingError as exc:
                self.error = str(exc)
        if self._matcher is not None and self.error is None and self._matcher.is_error():
            self.error = self._matcher.get_error()
        return None if self.error is not None else self._matcher

    @property
    def complete(self) -> bool:
        """True when the grammar accepts no more text (only eos is allowed next)."""
        matcher = self._get_matcher()
        return matcher is not None and matcher.is_stopped()

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A float32 copy of one row of logits `[vocab]` with -inf at every token the grammar does not allow next
        (ids from the tokenizer's vocabulary size on included); the logits unmasked once `error` is set."""
        row = np.asarray(logits, dtype=np.float32)
        matcher = self._get_matcher()
        bits = None if matcher is None else np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        if bits is None or self._get_matcher() is None:
            return row.copy()
        n = min(row.size, self.compiled.vocab_size)
        allowed = np.unpackbits(bits, count=n, bitorder="little").view(bool)
        out = np.full(row.shape, -np.inf, dtype=np.float32)
        np.copyto(out[:n], row[:n], where=allowed)
        return out

    def advance(self, token: int) -> None:
        """Consume the chosen token (it was allowed by `mask`); sets `error` if it was not."""
        matcher = self._get_matcher()
        if matcher is not None and not matcher.consume_token(int(token)):
            self.error = matcher.get_error() or f"token {int(token)} is not allowed here"
