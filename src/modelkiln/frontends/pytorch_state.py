"""TorchScript modules prepared for export when forward() is not a plain function of its tensors: constant
arguments bound (kiln-forward-args), and state the module writes between calls (silero-vad's RNN state and
audio context) read as the module holds it when loaded. The prepared module is one frozen graph."""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from modelkiln.frontends.pytorch_args import BoundForward, Slot

MAX_ROUNDS = 8  # each round folds one level of `if` on the state; real models need two or three


def written_attributes(module: Any) -> list[str]:
    """The attributes forward() writes: state a module keeps between calls (e.g. an RNN's hidden state)."""
    try:
        graph = module.inlined_graph
    except (AttributeError, RuntimeError):
        return []
    return sorted({n.s("name") for n in graph.findAllNodes("prim::SetAttr", True)})


def prepared(module: torch.jit.ScriptModule, slots: list[Slot], example: tuple[torch.Tensor, ...]
             ) -> tuple[torch.jit.ScriptModule, bool]:
    """`module` with its constant arguments bound, traced and frozen; its state read as `module` holds it now.
    The flag says whether every write of state could be folded away (else the exporter sees the writes)."""
    copied = copy.deepcopy(module)  # tracing runs forward, which may write state
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(BoundForward(copied, slots), example, check_trace=False)
    for path in _state_paths(module):  # back to the state before the trace ran
        _set(traced, ("module",) + path, copy.deepcopy(_get(module, path)))
    frozen = torch.jit.freeze(traced.eval())
    torch._C._jit_pass_constant_propagation(frozen.graph)
    return frozen, fold_state(frozen)


def fold_state(module: torch.jit.ScriptModule) -> bool:
    """Rewrite a frozen module's forward as one call from the state it holds: a read of written state becomes the
    state's value (or the value last written), then the writes go. False when the state flow depends on data."""
    graph = module.graph
    for _ in range(MAX_ROUNDS):
        if not graph.findAllNodes("prim::SetAttr", True):
            return True
        changed = _forward_reads(graph, graph.block(), module, _written(graph), set(), {}, top=True)
        torch._C._jit_pass_constant_propagation(graph)
        torch._C._jit_pass_dce(graph)
        if not changed:
            break
    mutated = _written(graph)
    if any(_path(n.output()) in mutated for n in graph.findAllNodes("prim::GetAttr", True)):
        return False
    for node in graph.findAllNodes("prim::SetAttr", True):
        node.destroy()  # the compiled model keeps no state: nothing reads these values any more
    torch._C._jit_pass_dce(graph)
    return True


def _forward_reads(graph, block, module, mutated: set, written: set, current: dict, top: bool) -> int:
    """Replace reads of state in program order: before any write, by the state's value; after a write at the top
    level, by the value written. Reads after a write inside a branch or loop stay (the next round may fold it)."""
    changed = 0
    for node in list(block.nodes()):
        kind = node.kind()
        if kind == "prim::GetAttr" and node.output().type().kind() != "ClassType":
            path = _path(node.output())
            value = None
            if path in mutated and path not in written:
                value = _constant(graph, _get(module, path))
            elif path in mutated and path in current:
                value = current[path]
            if value is not None:
                node.output().replaceAllUsesWith(value)
                node.destroy()
                changed += 1
            continue
        elif kind == "prim::SetAttr":
            path = _set_path(node)
            written.add(path)
            if top:
                current[path] = node.inputsAt(1)
            else:
                current.pop(path, None)
        if kind == "prim::Loop":  # a loop body may read what its previous iteration wrote
            inner = {_set_path(n) for n in node.findAllNodes("prim::SetAttr", True)} - {None}
            written |= inner
            for path in inner:
                current.pop(path, None)
        for inner_block in node.blocks():
            changed += _forward_reads(graph, inner_block, module, mutated, written, current, top=False)
    return changed


def _constant(graph, value: Any):
    try:
        with graph.insert_point_guard(next(iter(graph.nodes()))):  # first: it must come before every use
            return graph.insertConstant(value)
    except (RuntimeError, TypeError):
        return None  # a value TorchScript cannot hold as a constant: the read stays


def _written(graph) -> set[tuple[str, ...]]:
    return {_set_path(n) for n in graph.findAllNodes("prim::SetAttr", True)} - {None}


def _state_paths(module: Any) -> list[tuple[str, ...]]:
    return sorted(_written(module.inlined_graph))


def _path(value) -> tuple[str, ...] | None:
    """The attribute path a value is read from (("module", "_state")), or None when not from self."""
    names = []
    while value.node().kind() == "prim::GetAttr":
        names.append(value.node().s("name"))
        value = value.node().input()
    return tuple(reversed(names)) if value.node().kind() == "prim::Param" else None


def _set_path(node) -> tuple[str, ...] | None:
    owner = _path(node.inputsAt(0))
    return None if owner is None else owner + (node.s("name"),)


def _get(module: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        module = getattr(module, name)
    return module


def _set(module: Any, path: tuple[str, ...], value: Any) -> None:
    setattr(_get(module, path[:-1]), path[-1], value)
