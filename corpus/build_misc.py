"""MXNet, Darknet and tree-model builders.

MXNet files are written in MXNet 1.x's own formats (symbol JSON; NDArray list .params) without the mxnet
package, which has no wheel for this Python. Darknet models are real .cfg files (corpus/darknet/) with random
weights in darknet's layout. Tree models are trained on scikit-learn's bundled data sets.
"""
from __future__ import annotations

import json
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus.builders import SEED, BuildContext

DARKNET_CFGS = Path(__file__).resolve().parent / "darknet"


# ---- MXNet: a symbol graph under construction, saved as mx.model.save_checkpoint would ----------------------

@dataclass
class _Symbol:
    rng: np.random.Generator
    nodes: list[dict] = field(default_factory=list)
    args: dict[str, np.ndarray] = field(default_factory=dict)
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    def var(self, name: str, value: np.ndarray | None = None, aux: bool = False) -> int:
        """A variable node; with a value it is a parameter (arg:, or aux: for BatchNorm's running stats)."""
        self.nodes.append({"op": "null", "name": name, "inputs": []})
        if value is not None:
            (self.aux if aux else self.args)[name] = value.astype(np.float32)
        return len(self.nodes) - 1

    def op(self, op: str, name: str, inputs: list[int], **attrs: object) -> int:
        self.nodes.append({"op": op, "name": name, "attrs": {k: str(v) for k, v in attrs.items()},
                           "inputs": [[i, 0, 0] for i in inputs]})
        return len(self.nodes) - 1

    def conv(self, x: int, name: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> int:
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / (cin // groups * k * k))
        return self.op("Convolution", name, [x, self.var(f"{name}_weight", w)], kernel=(k, k), stride=(stride, stride),
                       pad=(k // 2, k // 2), num_filter=cout, num_group=groups, no_bias=True)

    def bn_relu(self, x: int, name: str, c: int, relu: bool = True) -> int:
        stats = [self.var(f"{name}_gamma", self.rng.uniform(0.5, 1.5, c)), self.var(f"{name}_beta", self.rng.normal(0, 0.1, c)),
                 self.var(f"{name}_moving_mean", self.rng.normal(0, 0.1, c), aux=True),
                 self.var(f"{name}_moving_var", self.rng.uniform(0.5, 1.5, c), aux=True)]
        y = self.op("BatchNorm", name, [x, *stats], eps=1e-5, fix_gamma=False, momentum=0.9)
        return self.op("Activation", f"{name}_relu", [y], act_type="relu") if relu else y

    def classifier(self, x: int, cin: int, classes: int = 1000) -> int:
        x = self.op("Pooling", "pool_gap", [x], kernel=(1, 1), global_pool=True, pool_type="avg")
        x = self.op("Flatten", "flatten", [x])
        w, b = self.rng.standard_normal((classes, cin)) / np.sqrt(cin), np.zeros(classes)
        x = self.op("FullyConnected", "fc1", [x, self.var("fc1_weight", w), self.var("fc1_bias", b)], num_hidden=classes)
        return self.op("SoftmaxOutput", "softmax", [x, self.var("softmax_label")])

    def save(self, out: Path, prefix: str, head: int) -> None:
        arg_nodes = [i for i, n in enumerate(self.nodes) if n["op"] == "null"]
        symbol = {"nodes": self.nodes, "arg_nodes": arg_nodes, "node_row_ptr": list(range(len(self.nodes) + 1)),
                  "heads": [[head, 0, 0]], "attrs": {"mxnet_version": ["int", 10901]}}
        (out / f"{prefix}-symbol.json").write_text(json.dumps(symbol, indent=2))
        named = [(f"arg:{k}", v) for k, v in self.args.items()] + [(f"aux:{k}", v) for k, v in self.aux.items()]
        (out / f"{prefix}-0000.params").write_bytes(_ndarray_list(named))


def _ndarray_list(named: list[tuple[str, np.ndarray]]) -> bytes:
    """NDArray::Save of a named list: magic 0x112, V2 arrays (dense, CPU, float32), then the names."""
    parts = [struct.pack("<QQQ", 0x112, 0, len(named))]
    for _, a in named:
        parts.append(struct.pack("<Iii", 0xF993FAC9, 0, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape))
        parts.append(struct.pack("<iii", 1, 0, 0) + np.ascontiguousarray(a, "<f4").tobytes())
    parts.append(struct.pack("<Q", len(named)))
    for name, _ in named:
        parts.append(struct.pack("<Q", len(name)) + name.encode())
    return b"".join(parts)


def mxnet_resnet18_v1(ctx: BuildContext) -> None:
    """ResNet-18 v1 as MXNet's image-classification example writes it: basic blocks, SoftmaxOutput."""
    s = _Symbol(np.random.default_rng(SEED))
    x = s.bn_relu(s.conv(s.var("data"), "conv0", 3, 64, 7, 2), "bn0", 64)
    x = s.op("Pooling", "pool0", [x], kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for unit in (1, 2):
            p, stride = f"stage{stage}_unit{unit}", 2 if stage > 1 and unit == 1 else 1
            body = s.bn_relu(s.conv(x, f"{p}_conv1", cin, cout, 3, stride), f"{p}_bn1", cout)
            body = s.bn_relu(s.conv(body, f"{p}_conv2", cout, cout, 3), f"{p}_bn2", cout, relu=False)
            skip = x if stride == 1 and cin == cout else \
                s.bn_relu(s.conv(x, f"{p}_sc", cin, cout, 1, stride), f"{p}_sc_bn", cout, relu=False)
            x = s.op("Activation", f"{p}_relu", [s.op("elemwise_add", f"{p}_plus", [body, skip])], act_type="relu")
            cin = cout
    s.save(ctx.out, "resnet18_v1", s.classifier(x, 512))


def mxnet_mobilenet_v1(ctx: BuildContext) -> None:
    """MobileNet v1 at width 0.25 (GluonCV's mobilenet0.25): depthwise/pointwise pairs."""
    s = _Symbol(np.random.default_rng(SEED))
    x = s.bn_relu(s.conv(s.var("data"), "conv0", 3, 8, 3, 2), "bn0", 8)
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    cin = 8
    for i, (cout, stride) in enumerate(plan, start=1):
        cout //= 4
        x = s.bn_relu(s.conv(x, f"dw{i}", cin, cin, 3, stride, groups=cin), f"dw{i}_bn", cin)
        x = s.bn_relu(s.conv(x, f"pw{i}", cin, cout, 1), f"pw{i}_bn", cout)
        cin = cout
    s.save(ctx.out, "mobilenet0.25", s.classifier(x, cin))


# ---- Darknet: a real .cfg, random weights in darknet's order -----------------------------------------------

def _sections(cfg: str) -> list[tuple[str, dict[str, str]]]:
    sections: list[tuple[str, dict[str, str]]] = []
    for line in (ln.split("#", 1)[0].strip() for ln in cfg.splitlines()):
        if line.startswith("["):
            sections.append((line.strip("[]"), {}))
        elif "=" in line:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
    return sections


def _darknet_weights(cfg: str, rng: np.random.Generator) -> bytes:
    """Header (major 0, minor 2, revision 5, int64 seen), then per conv layer: biases, and with batch_normalize
    scales, rolling means and variances, then the weights."""
    sections = _sections(cfg)
    channels = [int(sections[0][1].get("channels", 3))]  # channels[i + 1]: output of layer i
    blobs = [struct.pack("<iiiq", 0, 2, 5, 0)]
    for kind, opts in sections[1:]:
        cin = channels[-1]
        if kind == "convolutional":
            cout, k = int(opts["filters"]), int(opts["size"])
            if opts.get("batch_normalize") == "1":
                stats = [rng.normal(0, 0.1, cout), rng.uniform(0.5, 1.5, cout), rng.normal(0, 0.1, cout),
                         rng.uniform(0.5, 1.5, cout)]
            else:
                stats = [rng.normal(0, 0.1, cout)]
            blobs += [a.astype("<f4").tobytes() for a in stats]
            blobs.append((rng.standard_normal(cout * cin * k * k) * np.sqrt(2.0 / (cin * k * k))).astype("<f4").tobytes())
            channels.append(cout)
        elif kind == "route":
            refs = [int(v) for v in opts["layers"].split(",")]
            channels.append(sum(channels[r + 1 if r >= 0 else len(channels) + r] for r in refs))
        else:  # maxpool, upsample, yolo, region keep the channel count
            channels.append(cin)
    return b"".join(blobs)


def _darknet(ctx: BuildContext, cfg_name: str) -> None:
    cfg = (DARKNET_CFGS / cfg_name).read_text()
    (ctx.out / cfg_name).write_text(cfg)
    (ctx.out / cfg_name.replace(".cfg", ".weights")).write_bytes(_darknet_weights(cfg, np.random.default_rng(SEED)))


def darknet_yolov3_tiny(ctx: BuildContext) -> None:
    _darknet(ctx, "yolov3-tiny.cfg")


def darknet_yolov2_tiny_voc(ctx: BuildContext) -> None:
    _darknet(ctx, "yolov2-tiny-voc.cfg")


# ---- trees and other scikit-learn models, trained on the bundled data sets ---------------------------------

def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets
    return getattr(datasets, f"load_{name}")(return_X_y=True)


def _pickle(model: object, ctx: BuildContext, name: str = "model.pkl") -> None:
    (ctx.out / name).write_bytes(pickle.dumps(model))


def xgb_breast_cancer(ctx: BuildContext) -> None:
    import xgboost as xgb
    model = xgb.XGBClassifier(n_estimators=100, max_depth=4, random_state=SEED).fit(*_data("breast_cancer"))
    model.get_booster().save_model(str(ctx.out / "model.json"))


def xgb_diabetes(ctx: BuildContext) -> None:
    import xgboost as xgb
    model = xgb.XGBRegressor(n_estimators=200, max_depth=5, random_state=SEED).fit(*_data("diabetes"))
    model.get_booster().save_model(str(ctx.out / "model.ubj"))


def xgb_digits(ctx: BuildContext) -> None:
    """A 10-class XGBClassifier, pickled whole (the sklearn-API object, as many users ship it)."""
    import xgboost as xgb
    _pickle(xgb.XGBClassifier(n_estimators=30, max_depth=4, random_state=SEED).fit(*_data("digits")), ctx)


def sk_rf_iris(ctx: BuildContext) -> None:
    from sklearn.ensemble import RandomForestClassifier
    _pickle(RandomForestClassifier(n_estimators=50, random_state=SEED).fit(*_data("iris")), ctx)


def sk_gbr_diabetes(ctx: BuildContext) -> None:
    from sklearn.ensemble import GradientBoostingRegressor
    _pickle(GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=SEED).fit(*_data("diabetes")), ctx)


def sk_hgb_breast_cancer(ctx: BuildContext) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    _pickle(HistGradientBoostingClassifier(max_iter=100, random_state=SEED).fit(*_data("breast_cancer")), ctx)


def sk_logreg_digits(ctx: BuildContext) -> None:
    """StandardScaler + LogisticRegression: a pipeline skl2onnx takes to ONNX-ML."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    _pickle(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(*_data("digits")), ctx)


def sk_mlp_digits(ctx: BuildContext) -> None:
    from sklearn.neural_network import MLPClassifier
    _pickle(MLPClassifier((64, 32), max_iter=300, random_state=SEED).fit(*_data("digits")), ctx)
