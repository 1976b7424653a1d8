"""Parse the JSON-or-Python-literal strings that SageMaker request fields carry."""
from __future__ import annotations

import ast
import json
from typing import Any

from modelkiln.errors import ValidationError


def parse_literal(text: str, field_name: str) -> Any:
    """Parse strict JSON, or a Python literal (single quotes) as AWS's documentation examples use."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also an integer past Python's 4300-digit limit
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValidationError(
            field_name, f"is neither JSON nor a Python literal ({exc.__class__.__name__}): {text[:80]!r}"
        ) from None
