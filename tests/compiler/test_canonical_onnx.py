"""The canonical ONNX form IREE and TVM are given (compiler/canonical.py), on models as real exporters write them:
plain BatchNormalization at opset 13 (Keras via tf2onnx, older files), Expand/GreaterOrEqual below opset 16, graph
names that are not identifiers (`torch-jit-export`), and a YOLOv8-shaped detector whose torch export computes
slices and anchor grids from shapes. Each is compiled through the real pipeline for a route only IREE or TVM serves."""
from __future__ import annotations

import json
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.compiler.backends.iree import with_entry_name
from modelkiln.compiler.backends.tvm import TvmBackend
from modelkiln.compiler.canonical import CANONICAL_OPSET, canonicalize, runtime_shaped_nodes
from modelkiln.errors import CompilationError
from modelkiln.runtime import Model
from modelkiln.targets import parse_compiler_options, resolve

from ..conftest import tar_gz

C = 6  # channels


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _bn_params(prefix: str, rng: np.random.Generator, n: int = C) -> list[onnx.TensorProto]:
    return [_const(prefix + "_s", rng.uniform(0.5, 1.5, n).astype(np.float32)),
            _const(prefix + "_b", rng.standard_normal(n).astype(np.float32)),
            _const(prefix + "_m", rng.standard_normal(n).astype(np.float32)),
            _const(prefix + "_v", rng.uniform(0.5, 2.0, n).astype(np.float32))]


def bn_model(name: str = "torch-jit-export", opset: int = 13) -> onnx.ModelProto:
    """What tf2onnx/older exporters write: Conv -> BN, a BN after ReLU (nothing to fold into), Gemm -> BN, an
    Expand, and GreaterOrEqual (IREE converts it only from opset 16)."""
    rng = np.random.default_rng(0)
    bn = lambda p, x, y: helper.make_node("BatchNormalization", [x, p + "_s", p + "_b", p + "_m", p + "_v"], [y],
                                          name=p, epsilon=1e-3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        bn("bn_conv", "c", "cb"),
        helper.make_node("Relu", ["cb"], ["r"], name="relu"),
        bn("bn_alone", "r", "rb"),
        helper.make_node("GlobalAveragePool", ["rb"], ["p"], name="pool"),
        helper.make_node("Expand", ["p", "full"], ["pe"], name="expand"),  # [1,C,1,1] -> [1,C,8,8]
        helper.make_node("Sub", ["rb", "pe"], ["centered"], name="center"),
        helper.make_node("GreaterOrEqual", ["centered", "zero"], ["pos"], name="ge"),
        helper.make_node("Where", ["pos", "centered", "rb"], ["y"], name="select"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], transB=1, name="fc"),
        bn("bn_fc", "g", "z"),
    ]
    inits = [_const("w", (rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32)),
             _const("full", np.array([1, C, 8, 8], np.int64)), _const("zero", np.float32(0)),
             _const("fw", (rng.standard_normal((4, C)) * 0.5).astype(np.float32)),
             _const("fb", rng.standard_normal(4).astype(np.float32)),
             *_bn_params("bn_conv", rng), *_bn_params("bn_alone", rng), *_bn_params("bn_fc", rng, 4)]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 8, 8]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------------- a YOLOv8-shaped detector

class ConvBnSiLU(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class C2f(nn.Module):
    """YOLOv8's C2f: split in two, a residual bottleneck on the second half, concatenate all three."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1, self.cv2 = ConvBnSiLU(c1, 2 * self.c), ConvBnSiLU(3 * self.c, c2)
        self.m = nn.Sequential(ConvBnSiLU(self.c, self.c, 3), ConvBnSiLU(self.c, self.c, 3))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.append(y[-1] + self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """YOLOv8's head: box (DFL over 16 bins) and class branches, anchors built from the feature maps' shapes."""

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[float, ...]) -> None:
        super().__init__()
        self.nc, self.reg, self.strides, self.no = nc, 16, strides, nc + 64
        self.box = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, 16, 3), nn.Conv2d(16, 64, 1)) for c in ch)
        self.cls = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, 16, 3), nn.Conv2d(16, nc, 1)) for c in ch)
        self.dfl = nn.Conv2d(16, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(16, dtype=torch.float).view(1, 16, 1, 1)

    def forward(self, feats):
        x = [torch.cat((self.box[i](f), self.cls[i](f)), 1) for i, f in enumerate(feats)]
        points, strides = [], []
        for xi, stride in zip(x, self.strides):
            _, _, h, w = xi.shape  # traced: Shape -> Gather -> Range
            sy, sx = torch.meshgrid(torch.arange(end=h, dtype=xi.dtype) + 0.5,
                                    torch.arange(end=w, dtype=xi.dtype) + 0.5, indexing="ij")
            points.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), stride, dtype=xi.dtype))
        anchors, stride = torch.cat(points).transpose(0, 1), torch.cat(strides).transpose(0, 1)
        b = x[0].shape[0]
        box, cls = torch.cat([xi.view(b, self.no, -1) for xi in x], 2).split((64, self.nc), 1)
        a = box.shape[2]
        dist = self.dfl(box.view(b, 4, 16, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)  # traced: Slice with starts/ends computed from the shape
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride
        return torch.cat((boxes, cls.sigmoid()), 1)


class TinyYolo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p4 = nn.Sequential(ConvBnSiLU(3, 8, 3, 2), ConvBnSiLU(8, 16, 3, 2), C2f(16, 16))
        self.p8 = nn.Sequential(ConvBnSiLU(16, 32, 3, 2), C2f(32, 32))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = C2f(48, 16)
        self.detect = Detect(3, (16, 32), (4.0, 8.0))

    def forward(self, x):
        p4 = self.p4(x)
        p8 = self.p8(p4)
        return self.detect([self.neck(torch.cat((self.up(p8), p4), 1)), p8])


@pytest.fixture(scope="module")
def yolo(tmp_path_factory) -> Path:
    """TinyYolo exported the way YOLOv8's detectors are: TorchScript-based torch.onnx.export, opset 17."""
    d = tmp_path_factory.mktemp("yolo")
    torch.manual_seed(0)
    model = TinyYolo().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(d / "yolo.onnx"), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False)
    return d / "yolo.onnx"


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_same(original: onnx.ModelProto, canonical: onnx.ModelProto, shape: tuple[int, ...], name: str) -> None:
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    want, got = _outputs(original, {name: x}), _outputs(canonical, {name: x})
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.shape == g.shape and np.abs(w).max() > 0.1
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


def _archive(tmp_path: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    onnx.save(model, str(tmp_path / name))
    return tar_gz(tmp_path / "model.tar.gz", tmp_path / name)


# ---------------------------------------------------------------------------------- the canonical form itself

@pytest.mark.parametrize("opset", [13, 17])
def test_canonical_form_computes_what_the_original_does(opset):
    original = onnx.shape_inference.infer_shapes(bn_model(opset=opset), strict_mode=True)
    canonical = canonicalize(original)
    ops = _ops(canonical.model)
    assert "BatchNormalization" not in ops
    assert canonical.batchnorms == {"folded into Conv": 1, "folded into Gemm": 1, "rewritten as Mul+Add": 1}
    assert ops["Conv"] == 1 and ops["Gemm"] == 1  # folded, not added
    assert canonical.opset == (opset, CANONICAL_OPSET)
    assert canonical.model.graph.name == "torch-jit-export"  # renaming is the IREE backend's business
    assert [o.domain for o in canonical.model.opset_import] == [""]
    assert "BatchNormalization" in canonical.note() and ("opset 13 raised to 17" in canonical.note()) == (opset == 13)
    _assert_same(original, canonical.model, (1, 3, 8, 8), "x")
    assert _ops(original)["BatchNormalization"] == 3  # the input is untouched


def test_yolo_shape_subgraphs_fold_to_constants(yolo):
    original = onnx.shape_inference.infer_shapes(onnx.load(str(yolo)), strict_mode=True)
    dynamic = {r.op_type for r in runtime_shaped_nodes(original)}
    assert "Slice" in dynamic  # what TVM could not give a shape to
    start = time.perf_counter()
    canonical = canonicalize(original)
    seconds = time.perf_counter() - start
    assert runtime_shaped_nodes(canonical.model) == []
    assert not set(_ops(canonical.model)) & {"Shape", "Gather", "Range", "ConstantOfShape", "BatchNormalization"}
    assert all(d.HasField("dim_value") for v in canonical.model.graph.value_info for d in v.type.tensor_type.shape.dim)
    _assert_same(original, canonical.model, (1, 3, 64, 64), "images")
    assert seconds < 5, seconds


class ConvBnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def old_export(tmp_path_factory) -> Path:
    """An old-style file: opset 9, BatchNormalization left unfolded, every weight also listed as a graph input."""
    path = tmp_path_factory.mktemp("old") / "old.onnx"
    torch.manual_seed(0)
    model = ConvBnNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), input_names=["data"], opset_version=9,
                      do_constant_folding=False, keep_initializers_as_inputs=True, dynamo=False)
    return path


def test_old_export_weights_become_constants_and_batchnorms_fold(old_export):
    original = onnx.shape_inference.infer_shapes(onnx.load(str(old_export)), strict_mode=True)
    assert len(original.graph.input) > 1 and _ops(original)["BatchNormalization"] == 3
    canonical = canonicalize(original)
    assert [i.name for i in canonical.model.graph.input] == ["data"]
    assert canonical.batchnorms == {"folded into Conv": 2, "folded into Gemm": 1}
    assert "BatchNormalization" not in _ops(canonical.model) and canonical.opset == (9, 17)
    assert "weights listed as graph inputs made constants" in canonical.note()
    _assert_same(original, canonical.model, (1, 3, 16, 16), "data")


# ---------------------------------------------------------------------------------- IREE: real compiles

def test_old_export_compiles_for_i686(old_export, tmp_path):
    """i686 is IREE only; without the canonical form IREE refused this file's opset-9 operators (Flatten first)."""
    report = compile_job(CompileJob(model=tar_gz(tmp_path / "m.tar.gz", old_export), framework="ONNX",
                                    output_dir=tmp_path / "out", target_platform={"Os": "LINUX", "Arch": "X86"}))
    winner = report.winner()
    assert winner.backend == "iree" and winner.check.status == "checked: host twin" and "x86 ELF32" in winner.check.detail, winner
    assert winner.check.max_rel_err < 1e-4
    assert report.inputs == [{"name": "data", "shape": [1, 3, 16, 16], "dtype": "float32"}]


def test_batchnorm_at_opset_13_compiles_for_armv7(tmp_path):
    """armv7 is IREE only: without the canonical form IREE refused BatchNormalization and GreaterOrEqual at opset
    13, and the graph name torch-jit-export was not the module's entry."""
    report = compile_job(CompileJob(model=_archive(tmp_path, bn_model()), framework="ONNX", output_dir=tmp_path / "out",
                                    target_platform={"Os": "LINUX", "Arch": "ARM_EABIHF"}))
    winner = report.winner()
    assert winner.backend == "iree" and winner.check.status == "checked: host twin", winner
    assert "host twin" in winner.check.ran_on and "arm ELF32" in winner.check.detail  # armv7 cannot run here
    assert winner.check.max_rel_err < 1e-4
    assert any("opset 13 raised to 17" in n and "BatchNormalization" in n for n in winner.notes)
    assert winner.command.startswith("kiln canonical ONNX")
    with tarfile.open(tmp_path / "out" / "model.tar.gz") as tar:
        assert json.load(tar.extractfile("compiled.meta"))["Backend"]["Entry"] == "torch_jit_export"


def test_batchnorm_at_opset_13_runs_on_vulkan(tmp_path):
    """Vulkan is IREE only, and lavapipe runs it here: the canonical model's SPIR-V computes the original."""
    report = compile_job(CompileJob(model=_archive(tmp_path, bn_model("bn net")), framework="ONNX",
                                    output_dir=tmp_path / "out",
                                    target_platform={"Os": "LINUX", "Arch": "X86_64", "Accelerator": "INTEL_GRAPHICS"}))
    winner = report.winner()
    assert winner.backend == "iree" and winner.check.status == "verified" and "llvmpipe" in winner.check.ran_on
    assert winner.check.max_rel_err < 1e-4


def test_armv7_links_the_eabi_helpers_nearest_resize_calls(tmp_path):
    """YOLOv8's nearest-neighbour upsample converts floats to int64 indices: on armv7 LLVM calls __aeabi_f2lz,
    which IREE's embedded ELF cannot import (it was 'undefined symbol: __aeabi_f2lz'); Kiln links libgcc's."""
    graph = helper.make_graph([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", name="up")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [_const("scales", np.array([1, 1, 2, 2], np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    report = compile_job(CompileJob(model=_archive(tmp_path, model), framework="ONNX", output_dir=tmp_path / "out",
                                    target_device="rasp3b"))
    winner = report.winner()
    assert winner.backend == "iree" and winner.check.status == "checked: host twin" and "arm ELF32" in winner.check.detail, winner


def test_iree_entry_of_a_graph_named_with_spaces_and_dots_runs(tmp_path):
    """The module runs natively here, through the entry compiled.meta records (torch-jit-export: the armv7 test)."""
    model = bn_model("my model.v1.2", opset=17)
    report = compile_job(CompileJob(model=_archive(tmp_path, model), framework="ONNX", output_dir=tmp_path / "out",
                                    target_device="ml_c5", compiler_options='{"kiln-backend": "iree"}'))
    assert report.selected == "iree" and report.winner().check.status == "verified"
    artifact = Model(tmp_path / "out" / "model.tar.gz")
    with tarfile.open(tmp_path / "out" / "model.tar.gz") as tar:
        assert json.load(tar.extractfile("compiled.meta"))["Backend"]["Entry"] == "my_model_v1_2"
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for got, want in zip(artifact.run(x), _outputs(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("graph_name, entry", [("torch-jit-export", "torch_jit_export"), ("3d-unet", "_3d_unet"),
                                               ("", "main_graph"), ("main_graph", "main_graph")])
def test_iree_entry_names_are_identifiers(graph_name, entry):
    model = bn_model(graph_name or "g", opset=17)
    model.graph.name = graph_name
    assert with_entry_name(model).graph.name == entry


# ---------------------------------------------------------------------------------- TVM: real compiles

def test_yolov8_like_detector_compiles_for_jetson_nano(yolo, tmp_path):
    """TVM's NVPTX route: the export's shape-computed Slice once failed with 'emit_te now only supports Tensor that
    has ShapeExpr shape'; the canonical form's static shapes build, and the host twin matches onnxruntime."""
    report = compile_job(CompileJob(model=tar_gz(tmp_path / "yolo.tar.gz", yolo), framework="ONNX",
                                    output_dir=tmp_path / "out", target_device="jetson_nano"))
    winner = report.winner()
    assert winner.backend == "tvm" and winner.check.passed, report.candidates
    assert "assembled for sm_53 by ptxas" in winner.check.detail  # no GPU here: PTX and a host twin checked
    assert winner.check.max_rel_err < 1e-4
    assert report.outputs == [{"name": "output0", "shape": [1, 7, 320], "dtype": "float32"}]


def test_tvm_names_the_operator_whose_shape_is_only_known_at_run_time(tmp_path):
    """A Slice whose end is an input's value cannot be folded: the error names it instead of TVM's internals."""
    graph = helper.make_graph([helper.make_node("Slice", ["x", "start", "n"], ["y"], name="cut")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4]),
                               helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_const("start", np.array([0], np.int64))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    options = parse_compiler_options(None)
    with pytest.raises(CompilationError) as err:
        TvmBackend().compile(onnx.shape_inference.infer_shapes(model), resolve(options, device="jetson_nano"),
                             options, tmp_path)
    assert "'Slice' (node 'cut')" in err.value.message and "its ends at run time" in err.value.message
    assert "kiln-backend" in err.value.hint
