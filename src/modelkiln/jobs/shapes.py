"""Check a request against botocore's SageMaker service model: members, JSON types, enums, patterns, bounds.

The model is data (botocore's service-2.json), so nothing here restates a shape. Its `pattern`s are Java
regular expressions that must match the whole value; `python_pattern` translates them for `re`.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import sys
import unicodedata
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import botocore.session
from botocore.model import ServiceModel, Shape, StructureShape

from modelkiln.errors import KilnError, ValidationError

SERVICE = "sagemaker"
# The operations Kiln serves; the API answers any other X-Amz-Target with UnknownOperationException.
OPERATIONS = (
    "CreateCompilationJob", "DescribeCompilationJob", "ListCompilationJobs", "StopCompilationJob",
    "DeleteCompilationJob", "AddTags", "ListTags", "DeleteTags",
)
INTEGER_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}  # Java int / long


class UnknownOperationError(KilnError):
    """The request names an operation Kiln does not serve (the API answers UnknownOperationException)."""

    def __init__(self, operation: str) -> None:
        known = operation in service_model().operation_names
        why = "is a SageMaker operation Kiln does not serve" if known else "is not a SageMaker operation"
        super().__init__(f"{operation!r} {why}; Kiln serves {', '.join(OPERATIONS)}")
        self.operation = operation


@functools.cache
def service_model() -> ServiceModel:
    """botocore's SageMaker service model, loaded once."""
    return botocore.session.get_session().get_service_model(SERVICE)


def input_shape(operation: str) -> StructureShape:
    """The input shape of an operation Kiln serves; UnknownOperationError for any other name."""
    if operation not in OPERATIONS:
        raise UnknownOperationError(operation)
    shape = service_model().operation_model(operation).input_shape
    assert shape is not None, f"{operation} has no input shape"
    return shape


def validate_input(operation: str, params: Any) -> None:
    """Check params against the operation's input shape; ValidationError names the dotted member path."""
    check_shape(input_shape(operation), params, operation)


def check_shape(shape: StructureShape, params: Any, operation: str) -> None:
    """Check params against a request shape of any botocore service model (Kiln's own too)."""
    if not isinstance(params, dict):
        raise ValidationError(operation, "the request body must be a JSON object")
    _check(shape, params, "")


def parse_timestamp(value: Any, field: str) -> datetime:
    """A wire timestamp (epoch seconds, or an ISO 8601 string; no zone means UTC) as an aware datetime."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise ValidationError(field, violation(
        value, "Member must be a timestamp: epoch seconds (e.g. 1700000000.5) or ISO 8601 text"))


def violation(value: Any, constraint: str) -> str:
    """AWS's wording: "Value 'x' failed to satisfy constraint: Member must ..."."""
    return f"Value {_show(value)} failed to satisfy constraint: {constraint}"


# ---- the walk -------------------------------------------------------------------------------------

def _check(shape: Shape, value: Any, path: str) -> None:
    _CHECKS[shape.type_name](shape, value, path)


def _check_structure(shape: Shape, value: Any, path: str) -> None:
    _expect(isinstance(value, dict), value, path, "a JSON object")
    assert isinstance(shape, StructureShape)
    for name in value:  # unknown first: a misspelt required member is reported as the typo it is
        if name not in shape.members:
            raise ValidationError(
                _join(path, name), f"unknown member; {shape.name} has: {', '.join(shape.members)}")
    for name in shape.required_members:
        if value.get(name) is None:
            _fail(_join(path, name), None, "Member must not be null")
    for name, item in value.items():
        if item is not None:  # JSON null reads as absent
            _check(shape.members[name], item, _join(path, name))


def _check_list(shape: Shape, value: Any, path: str) -> None:
    _expect(isinstance(value, list), value, path, "a JSON array")
    _check_length(shape, value, path)
    for i, item in enumerate(value):
        _check(shape.member, item, f"{path}[{i}]")  # type: ignore[attr-defined]


def _check_map(shape: Shape, value: Any, path: str) -> None:
    _expect(isinstance(value, dict), value, path, "a JSON object")
    _check_length(shape, value, path)
    for key, item in value.items():
        _check(shape.key, key, f"{path}.{key}")  # type: ignore[attr-defined]
        _check(shape.value, item, f"{path}.{key}")  # type: ignore[attr-defined]


def _check_string(shape: Shape, value: Any, path: str) -> None:
    _expect(isinstance(value, str), value, path, "a string")
    enum = getattr(shape, "enum", None)
    if enum and value not in enum:
        _fail(path, value, f"Member must satisfy enum value set: [{', '.join(enum)}]")
    _check_length(shape, value, path)
    pattern = shape.metadata.get("pattern")
    compiled = python_pattern(pattern) if pattern is not None else None
    if compiled is not None and not compiled.fullmatch(value):
        _fail(path, value, f"Member must satisfy regular expression pattern: {pattern}")


def _check_integer(shape: Shape, value: Any, path: str) -> None:
    low, high = INTEGER_RANGES[shape.type_name]
    _expect(isinstance(value, int) and not isinstance(value, bool), value, path, "an integer")
    _expect(low <= value <= high, value, path, f"an integer from {low} to {high}")
    _check_range(shape, value, path)


def _check_float(shape: Shape, value: Any, path: str) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    _expect(number and math.isfinite(value), value, path, "a finite number")
    _check_range(shape, value, path)


def _check_boolean(shape: Shape, value: Any, path: str) -> None:
    _expect(isinstance(value, bool), value, path, "true or false")


def _check_timestamp(shape: Shape, value: Any, path: str) -> None:
    parse_timestamp(value, path)


def _check_blob(shape: Shape, value: Any, path: str) -> None:
    try:
        base64.b64decode(value, validate=True)
    except (TypeError, ValueError, binascii.Error):
        _expect(False, value, path, "base64 text")


_CHECKS: dict[str, Callable[[Shape, Any, str], None]] = {
    "structure": _check_structure, "list": _check_list, "map": _check_map, "string": _check_string,
    "integer": _check_integer, "long": _check_integer, "float": _check_float, "double": _check_float,
    "boolean": _check_boolean, "timestamp": _check_timestamp, "blob": _check_blob,
}


def _check_length(shape: Shape, value: str | list | dict, path: str) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and len(value) < low:
        _fail(path, value, f"Member must have length greater than or equal to {low}")
    if high is not None and len(value) > high:
        _fail(path, value, f"Member must have length less than or equal to {high}")


def _check_range(shape: Shape, value: float, path: str) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and value < low:
        _fail(path, value, f"Member must have value greater than or equal to {low}")
    if high is not None and value > high:
        _fail(path, value, f"Member must have value less than or equal to {high}")


def _expect(ok: bool, value: Any, path: str, what: str) -> None:
    if not ok:
        _fail(path, value, f"Member must be {what}")


def _fail(path: str, value: Any, constraint: str) -> NoReturn:
    raise ValidationError(path, violation(value, constraint))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(value: Any, limit: int = 100) -> str:
    if value is None:
        return "null"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return "'" + (text if len(text) <= limit else text[:limit] + "...") + "'"


# ---- Java patterns -> re --------------------------------------------------------------------------
# Java's `.` stops at every line terminator, and its \d \s \w are ASCII (hence re.ASCII); \p{..} classes
# are expanded from unicodedata. A pattern that cannot be translated is skipped (python_pattern gives
# None): in botocore 1.44.5's SageMaker model none of the served operations' patterns is; elsewhere the
# tag patterns written `(...)${1,128}` (a quantified `$`, which `re` refuses) are.
_JAVA_DOT = "[^\\n\\r\\x85\\u2028\\u2029]"
_POSIX = {"Lower": "a-z", "Upper": "A-Z", "Alpha": "a-zA-Z", "Digit": "0-9", "Alnum": "a-zA-Z0-9",
          "XDigit": "0-9a-fA-F", "Space": " \\t\\n\\x0b\\f\\r", "ASCII": "\\x00-\\x7f"}
_PROPERTY = re.compile(r"\{(\w+)\}|([A-Z])")


@functools.cache
def python_pattern(java: str) -> re.Pattern[str] | None:
    """The `re` form of one of botocore's Java patterns (use fullmatch); None if it cannot be translated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # e.g. a set `re` would read differently later
            return re.compile(_translate(java), re.ASCII)
    except (ValueError, IndexError, re.error, FutureWarning):
        return None


def _translate(java: str) -> str:
    out: list[str] = []
    i, in_class = 0, False
    while i < len(java):
        c = java[i]
        if c == "\\":
            token, i = _escape(java, i, in_class)
            out.append(token)
            continue
        if c == "[" and in_class:
            raise ValueError("nested character class (a Java union)")
        if c == "&" and in_class and java.startswith("&&", i):
            raise ValueError("character class intersection")
        in_class = (in_class and c != "]") or c == "["
        out.append(_JAVA_DOT if c == "." and not in_class else c)
        i += 1
    return "".join(out)


def _escape(java: str, i: int, in_class: bool) -> tuple[str, int]:
    kind = java[i + 1]
    if kind in "pP":
        match = _PROPERTY.match(java, i + 2)
        if match is None:
            raise ValueError("malformed \\p")
        body = _property_class(match.group(1) or match.group(2))
        if in_class and kind == "P":
            raise ValueError("negated property inside a class")
        return (body if in_class else f"[{'^' if kind == 'P' else ''}{body}]"), match.end()
    if kind == "u":  # Java writes supplementary characters as a pair of \u surrogate escapes
        code, end = int(java[i + 2:i + 6], 16), i + 6
        if 0xD800 <= code <= 0xDBFF and java.startswith("\\u", end):
            low = int(java[end + 2:end + 6], 16)
            if 0xDC00 <= low <= 0xDFFF:
                code, end = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), end + 6
        return f"\\U{code:08x}", end
    if kind == "z":
        return "\\Z", i + 2
    if kind in "QEGkhHvVRXZe0c":  # Java-only, or meaning something else in `re`
        raise ValueError(f"Java escape \\{kind}")
    return java[i:i + 2], i + 2


def _property_class(name: str) -> str:
    if name in _POSIX:
        return _POSIX[name]
    name = name.removeprefix("Is")
    body = _unicode_class(name) if re.fullmatch(r"[A-Z][a-z]?", name) else ""
    if not body:
        raise ValueError(f"unknown property {name}")
    return body


@functools.cache
def _unicode_class(prefix: str) -> str:
    runs = _category_runs()
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for cat in runs if cat.startswith(prefix) for a, b in runs[cat])


@functools.cache
def _category_runs() -> dict[str, list[tuple[int, int]]]:
    runs: dict[str, list[tuple[int, int]]] = {}
    start, current = 0, unicodedata.category("\0")
    for cp in range(1, sys.maxunicode + 2):
        cat = unicodedata.category(chr(cp)) if cp <= sys.maxunicode else ""
        if cat != current:
            runs.setdefault(current, []).append((start, cp - 1))
            start, current = cp, cat
    return runs
