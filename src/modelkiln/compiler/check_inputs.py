"""The inputs every candidate is checked on: one sample drawn from the declared inputs, plus the user's own
samples when the archive has a `kiln-inputs.npz`.

Drawn values respect what the model declares and does: floats from a standard normal; uint8/int8 inputs over
their whole range (images, quantized tensors); integer inputs that index a Gather (token ids into an
embedding) over the range that Gather allows; other integers and bools in {0, 1} (masks, flags). Tree models
also get missing values (NaN) where their framework accepts them.
"""
from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from modelkiln.errors import CompilationError
from modelkiln.frontends import ConvertedModel, TensorSpec

SEED = 20261122
SAMPLE_ROWS = 256  # rows drawn for a free (-1) row dimension: tree models
MISSING_SHARE = 0.1  # share of tree-model features drawn as NaN (missing)
INPUTS_FILE = "kiln-inputs.npz"
MAX_USER_SAMPLES = 8  # each sample is one more run of every candidate, under emulation too
# Ops an index passes through unchanged on its way to a Gather.
INDEX_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose"}

Feeds = dict[str, np.ndarray]


@dataclass
class CheckInputs:
    """The samples every candidate runs on, the source framework's outputs on each, and how they were made."""

    samples: list[Feeds]  # samples[0] is the drawn one: it is also what candidates are timed on
    expected: list[list[np.ndarray]]
    described: str


def prepare(model: ConvertedModel, model_dir: Path) -> CheckInputs:
    """Draw a sample, add the archive's own samples, and run the source model on each."""
    ranges = index_ranges(model.onnx_model, model.inputs) if model.onnx_model is not None else {}
    missing = model.tree_model is not None
    drawn = draw(model.inputs, ranges, missing=missing)
    try:
        expected = [model.reference(drawn)]
    except Exception:
        if not missing:
            raise
        missing = False  # the framework refuses NaN (a forest trained without missing values)
        drawn = draw(model.inputs, ranges)
        expected = [model.reference(drawn)]
    user = load_user_samples(model_dir, model.inputs)
    expected += [_reference(model.reference, s, i) for i, s in enumerate(user)]
    described = describe(model.inputs, ranges, missing) + (
        f"; and {len(user)} sample(s) from the archive's {INPUTS_FILE}" if user else "")
    return CheckInputs([drawn, *user], expected, described)


def draw(specs: list[TensorSpec], ranges: dict[str, int] | None = None, seed: int = SEED,
         missing: bool = False) -> Feeds:
    """One sample of every input, as the module docstring says; ranges: name -> exclusive upper bound."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        shape = tuple(SAMPLE_ROWS if d == -1 else d for d in spec.shape)
        if dtype.kind == "f":
            values = rng.standard_normal(shape)
            if missing:
                values[rng.random(shape) < MISSING_SHARE] = np.nan
        elif dtype.kind in "iu" and dtype.itemsize == 1:
            info = np.iinfo(dtype)
            values = rng.integers(info.min, info.max, size=shape, endpoint=True)
        else:
            values = rng.integers(0, (ranges or {}).get(spec.name, 2), size=shape)
        feeds[spec.name] = values.astype(dtype)
    return feeds


def describe(specs: list[TensorSpec], ranges: dict[str, int], missing: bool) -> str:
    """What draw() made, for the report."""
    parts = []
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            parts.append(f"{spec.name}: standard normal" + (f", {MISSING_SHARE:.0%} NaN (missing)" if missing else ""))
        elif dtype.kind in "iu" and dtype.itemsize == 1:
            parts.append(f"{spec.name}: uniform over {dtype.name}")
        elif spec.name in ranges:
            parts.append(f"{spec.name}: integers in [0, {ranges[spec.name]}) (the Gather it indexes)")
        else:
            parts.append(f"{spec.name}: {{0, 1}}")
    rows = f"; {SAMPLE_ROWS} rows where the row count is free" if any(-1 in s.shape for s in specs) else ""
    return f"one drawn sample (seed {SEED}): " + ", ".join(parts) + rows


def index_ranges(model: onnx.ModelProto, specs: list[TensorSpec]) -> dict[str, int]:
    """For each integer input that reaches a Gather's indices through shape-only ops: the size of the axis
    it indexes (the smallest, when it indexes several). Sizes come from initializers or inferred shapes."""
    names = {s.name for s in specs if np.dtype(s.dtype).kind in "iu"}
    if not names:
        return {}
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes are a help here, not a need: initializers alone often say the size
        pass
    graph = model.graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    for value in (*graph.value_info, *graph.input, *graph.output):
        shape = value.type.tensor_type.shape.dim
        dims.setdefault(value.name, [d.dim_value if d.HasField("dim_value") else 0 for d in shape])
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranges = {}
    for name in names:
        bound = _gather_bound(name, consumers, dims)
        if bound:
            ranges[name] = bound
    return ranges


def _gather_bound(name: str, consumers: dict[str, list[onnx.NodeProto]], dims: dict[str, list[int]]) -> int:
    """The smallest Gather axis size that values flowing from name index; 0 when none is known."""
    bounds, todo, seen = [], [name], set()
    while todo:
        value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        for node in consumers.get(value, []):
            if node.op_type in ("Gather", "GatherElements") and list(node.input[1:2]) == [value]:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                shape = dims.get(node.input[0], [])
                size = shape[axis] if -len(shape) <= axis < len(shape) else 0
                if size > 0:
                    bounds.append(size)
            elif node.op_type in INDEX_PASS_THROUGH and node.input[0] == value:
                todo.extend(node.output)
    return min(bounds) if bounds else 0


def load_user_samples(model_dir: Path, specs: list[TensorSpec]) -> list[Feeds]:
    """The samples in the archive's kiln-inputs.npz (see read_samples); at most MAX_USER_SAMPLES are used. []
    when there is no file."""
    found = sorted(model_dir.rglob(INPUTS_FILE))
    return read_samples(found[0], specs, INPUTS_FILE, MAX_USER_SAMPLES) if found else []


def read_samples(path: Path, specs: list[TensorSpec], label: str, limit: int) -> list[Feeds]:
    """Samples from an .npz of one array per input name, each shaped as declared (one sample), [N, *declared],
    or, for a batch-1 input, [N, *declared[1:]] (the sample axis in the batch's place); the first `limit`."""
    try:
        with np.load(path, allow_pickle=False) as npz:  # a pickle inside would be code
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _bad(label, f"{label} cannot be read as a NumPy .npz of plain arrays ({exc})") from None
    wanted = [s.name for s in specs]
    if sorted(arrays) != sorted(wanted):
        raise _bad(label, f"{label} holds arrays {sorted(arrays)}; the model's inputs are {wanted}")
    counts = {s.name: _sample_count(arrays[s.name], s, label) for s in specs}
    if len(set(counts.values())) != 1:
        raise _bad(label, f"{label}'s arrays hold different numbers of samples: {counts}")
    count = min(next(iter(counts.values())), limit)
    samples = []
    for i in range(count):
        sample = {}
        for spec in specs:
            array = arrays[spec.name]
            one = (array if array.ndim == len(spec.shape) and count == 1 and _fits(array.shape, spec)
                   else array[i] if array.ndim == len(spec.shape) + 1 else array[i:i + 1])
            sample[spec.name] = _cast(one, spec, label)
        samples.append(sample)
    return samples


def _fits(shape: tuple[int, ...], spec: TensorSpec) -> bool:
    return len(shape) == len(spec.shape) and all(d == -1 or d == s for d, s in zip(spec.shape, shape))


def _sample_count(array: np.ndarray, spec: TensorSpec, label: str) -> int:
    """1 for an array of the declared shape, N for [N, *declared] or [N, *declared[1:]] (batch 1); else the
    input's error."""
    if _fits(array.shape, spec):
        return 1
    if array.ndim == len(spec.shape) + 1 and array.shape[0] > 0 and _fits(array.shape[1:], spec):
        return array.shape[0]
    if spec.shape and spec.shape[0] == 1 and array.ndim == len(spec.shape) and array.shape[0] > 0 and \
            _fits((1, *array.shape[1:]), spec):
        return array.shape[0]
    raise _bad(label, f"{label}[{spec.name!r}] has shape {list(array.shape)}; the input is {list(spec.shape)} "
               f"(or [N, {', '.join(map(str, spec.shape))}] for N samples)")


def _cast(array: np.ndarray, spec: TensorSpec, label: str) -> np.ndarray:
    """The array in the input's dtype; refused where values would change kind (float data to an int input)."""
    dtype = np.dtype(spec.dtype)
    if not np.can_cast(array.dtype, dtype, casting="same_kind") and not (
            array.dtype.kind in "biu" and dtype.kind in "biuf"):
        raise _bad(label, f"{label}[{spec.name!r}] is {array.dtype.name}; the input takes {dtype.name}")
    return np.ascontiguousarray(array.astype(dtype))


def _reference(reference: Callable[[Feeds], list[np.ndarray]], sample: Feeds, index: int) -> list[np.ndarray]:
    try:
        return reference(sample)
    except Exception as exc:
        raise _bad(INPUTS_FILE, f"the source model fails on sample {index} of {INPUTS_FILE}: "
                   f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}") from None


def _bad(label: str, message: str) -> CompilationError:
    return CompilationError("convert", message, f"fix {label} (one array per input name, shaped as DataInputConfig "
                            "says, optionally with a leading sample axis), or leave it out.")
