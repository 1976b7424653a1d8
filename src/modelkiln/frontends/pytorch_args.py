"""forward() arguments that are not tensors (e.g. silero-vad's `forward(x, sr: int)`): read from the TorchScript
schema, given as constants in CompilerOptions `kiln-forward-args`, bound for the reference run and the export."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.input_config import FIELD as INPUT_FIELD

FORWARD_ARGS = "kiln-forward-args"  # the CompilerOptions key (targets/options.py validates it; frontends import no part)
OPTION_FIELD = f"OutputConfig.CompilerOptions.{FORWARD_ARGS}"
_PLACEHOLDERS = {"IntType": "<int>", "FloatType": "<float>", "BoolType": "<true|false>", "StringType": "<string>"}


@dataclass(frozen=True)
class Param:
    """One forward() parameter after self, as the TorchScript schema declares it."""

    name: str
    type: Any  # torch._C.JitType
    has_default: bool
    default: Any = None

    @property
    def tensor(self) -> bool:
        """Whether a DataInputConfig tensor can fill it (Tensor or Optional[Tensor])."""
        t = self.type.getElementType() if self.type.kind() == "OptionalType" else self.type
        return t.kind() == "TensorType"

    def __str__(self) -> str:
        return f"{self.name}: {self.type}"


@dataclass(frozen=True)
class Constant:
    """A bound argument: a constant from kiln-forward-args, or the parameter's default."""

    value: Any


Slot = int | Constant  # an int: the index of the DataInputConfig tensor passed there


def forward_params(module: Any) -> list[Param] | None:
    """forward()'s parameters after self, from the TorchScript schema; None when the module has none."""
    try:
        arguments = module.forward.schema.arguments[1:]
    except (AttributeError, RuntimeError):
        return None
    return [Param(a.name, a.type, a.has_default_value(), a.default_value if a.has_default_value() else None)
            for a in arguments]


def bind(params: list[Param] | None, n_inputs: int, given: Mapping[str, Any] | Sequence[Any] | None
         ) -> list[Slot] | None:
    """What forward() is called with: a slot per parameter. None when it takes just the tensors (plain call)."""
    if params is None or (given is None and all(p.tensor or p.has_default for p in params)):
        return None  # forward(*tensors) works as it is
    named = _named(params, given)
    signature = ", ".join(map(str, params))
    slots: list[Slot] = []
    missing: list[Param] = []
    used = 0
    for param in params:
        if param.name in named:
            slots.append(Constant(named[param.name]))
        elif param.tensor and used < n_inputs:
            slots.append(used)
            used += 1
        elif param.has_default:
            slots.append(Constant(param.default))
        else:
            missing.append(param)
    if missing:
        raise _missing(missing, signature, n_inputs)
    if used < n_inputs:
        raise CompilationError(
            "convert", f"{INPUT_FIELD} gives {n_inputs} inputs but forward({signature}) takes {used} tensor(s).",
            f"give one {INPUT_FIELD} entry per tensor parameter of forward().")
    return slots


def call_args(slots: list[Slot], tensors: Sequence[torch.Tensor]) -> list[Any]:
    """The positional arguments of forward() for these input tensors."""
    return [tensors[s] if isinstance(s, int) else s.value for s in slots]


def describe(params: list[Param], slots: list[Slot]) -> str:
    """The constants bound, for the report's notes, e.g. "sr=16000"."""
    return ", ".join(f"{p.name}={s.value!r}" for p, s in zip(params, slots) if isinstance(s, Constant))


class BoundForward(torch.nn.Module):
    """A TorchScript module whose forward takes only the input tensors: its other arguments fixed as given."""

    def __init__(self, module: torch.jit.ScriptModule, slots: list[Slot]) -> None:
        super().__init__()
        self.module = module
        self.slots = slots

    def forward(self, *tensors: torch.Tensor):
        return self.module(*call_args(self.slots, tensors))


def _named(params: list[Param], given: Mapping[str, Any] | Sequence[Any] | None) -> dict[str, Any]:
    """The option as {parameter: value}, each checked against the parameter's declared type."""
    if given is None:
        return {}
    by_name = {p.name: p for p in params}
    if isinstance(given, Mapping):
        pairs = list(given.items())
        for name, _ in pairs:
            if name not in by_name:
                raise ValidationError(f"{OPTION_FIELD}.{name}", f"forward() has no parameter {name!r}; its "
                                                                f"parameters: {', '.join(map(str, params)) or 'none'}")
    else:
        others = [p for p in params if not p.tensor]
        if len(given) > len(others):
            raise ValidationError(OPTION_FIELD, f"gives {len(given)} values but forward() has {len(others)} "
                                                f"non-tensor parameter(s): {', '.join(map(str, others)) or 'none'}")
        pairs = [(p.name, v) for p, v in zip(others, given)]
    return {name: _as_type(value, by_name[name].type, by_name[name], f"{OPTION_FIELD}.{name}")
            for name, value in pairs}


def _as_type(value: Any, jit_type: Any, param: Param, field_name: str) -> Any:
    """The value as forward() takes it (a float for float, a tuple for Tuple[...]); ValidationError if it cannot."""
    kind = jit_type.kind()
    if kind == "OptionalType":
        return None if value is None else _as_type(value, jit_type.getElementType(), param, field_name)
    if kind == "TensorType":
        raise ValidationError(field_name, f"{param} is a tensor: give its shape in {INPUT_FIELD}, not here")
    if kind in ("ListType", "TupleType"):
        if isinstance(value, list | tuple):
            types = [jit_type.getElementType()] * len(value) if kind == "ListType" else jit_type.elements()
            if len(types) == len(value):
                items = [_as_type(v, t, param, field_name) for v, t in zip(value, types)]
                return items if kind == "ListType" else tuple(items)
        fits = False
    else:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        fits = {"IntType": number and isinstance(value, int), "FloatType": number, "NumberType": number,
                "BoolType": isinstance(value, bool), "StringType": isinstance(value, str),
                "NoneType": value is None}.get(kind)
        if fits is None:
            return value  # a type Kiln does not check (e.g. Device): torch says if it does not fit
    if not fits:
        raise ValidationError(field_name, f"forward() takes {param}; {json.dumps(value)} is not a {jit_type}")
    return float(value) if kind == "FloatType" else value


def _missing(missing: list[Param], signature: str, n_inputs: int) -> CompilationError:
    tensors = ", ".join(f"{p.name} ({p.type})" for p in missing if p.tensor)
    others = [p for p in missing if not p.tensor]
    if not others:
        return CompilationError(
            "convert", f"forward({signature}) also takes {tensors}; {INPUT_FIELD} gives {n_inputs} tensor(s).",
            f"give one {INPUT_FIELD} entry per tensor parameter of forward().")
    names = ", ".join(f"{p.name} ({p.type})" for p in others)
    example = ", ".join(f'"{p.name}": {_PLACEHOLDERS.get(p.type.kind(), f"<{p.type}>")}' for p in others)
    return CompilationError(
        "convert", f"forward({signature}) takes {names}, which {INPUT_FIELD} cannot give: it gives tensors only"
                   + (f"; it also lacks {tensors}." if tensors else "."),
        f'give {"it as a constant" if len(others) == 1 else "them as constants"} in CompilerOptions: '
        f'{{"{FORWARD_ARGS}": {{{example}}}}} (parameter name to value; or a list of the values in order). '
        "The model is compiled for these values.")
