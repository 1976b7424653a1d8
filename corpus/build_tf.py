"""TensorFlow-family builders: Keras files (.keras), SavedModels and TFLite flatbuffers.

keras.applications models are built with weights=None (random; nothing downloaded). mtcnn's three nets are
rebuilt as functional Keras models with mtcnn's own layer list, and given the weights its wheel ships.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from keras import layers as L  # noqa: E402

from corpus.builders import SEED, BuildContext  # noqa: E402


def _seed() -> None:
    keras.utils.set_random_seed(SEED)


# Random-weight classifiers end in logits, not softmax: random weights saturate a 1000-way softmax to one-hot,
# which any backend matches exactly, so the check would compare nothing.


def _image() -> keras.KerasTensor:
    """A named 224x224 RGB input: keras.applications would name it keras_tensor_<counter>."""
    return keras.Input((224, 224, 3), name="image")


def _export(model: keras.Model, ctx: BuildContext, folder: str = "saved_model") -> None:
    """A TF SavedModel with the serving_default signature (Keras 3's export)."""
    model.export(str(ctx.out / folder), format="tf_saved_model", verbose=False)


def keras_mobilenet_v2(ctx: BuildContext) -> None:
    _seed()
    keras.applications.MobileNetV2(weights=None, input_tensor=_image(), classifier_activation=None).save(ctx.out / "model.keras")


def keras_efficientnet_b0(ctx: BuildContext) -> None:
    """EfficientNet-B0 includes its own Rescaling and Normalization layers, as shipped."""
    _seed()
    keras.applications.EfficientNetB0(weights=None, input_tensor=_image(), classifier_activation=None).save(ctx.out / "model.keras")


def _lstm_text(batch: int | None = None) -> keras.Model:
    ids = keras.Input((64,), batch_size=batch, dtype="int32", name="tokens")
    x = L.Embedding(5000, 64)(ids)
    x = L.LSTM(96, return_sequences=True)(x)
    x = L.LSTM(64)(x)
    return keras.Model(ids, L.Dense(4, activation="softmax")(x), name="lstm_text")


def keras_lstm_text(ctx: BuildContext) -> None:
    """A text classifier: embedding, two stacked LSTMs, softmax."""
    _seed()
    _lstm_text().save(ctx.out / "model.keras")


def tf_resnet50_savedmodel(ctx: BuildContext) -> None:
    _seed()
    _export(keras.applications.ResNet50(weights=None, input_tensor=_image(), classifier_activation=None), ctx)


def tf_mobilenet_v3_small_savedmodel(ctx: BuildContext) -> None:
    """MobileNetV3-Small (hard-swish, squeeze-excite), with its preprocessing layers."""
    _seed()
    _export(keras.applications.MobileNetV3Small(weights=None, input_tensor=_image(), classifier_activation=None), ctx)


def tflite_int8_mobilenet_v2(ctx: BuildContext) -> None:
    """MobileNetV2 (alpha 0.35, 96x96, 10 classes) fully int8-quantized, int8 input and output."""
    _seed()
    model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(96, 96, 3), classes=10)
    rng = np.random.default_rng(SEED)

    def calibration():
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    (ctx.out / "model.tflite").write_bytes(converter.convert())


def tflite_lstm(ctx: BuildContext) -> None:
    """The LSTM text classifier as a float TFLite file, batch 1. The converter does not fuse Keras 3's LSTM:
    each becomes a WHILE loop, as users' Keras 3 models do."""
    _seed()
    converter = tf.lite.TFLiteConverter.from_keras_model(_lstm_text(batch=1))
    (ctx.out / "model.tflite").write_bytes(converter.convert())


# ---- mtcnn (weights from mtcnn==1.0.0's wheel: joblib lists of arrays, lz4-compressed) ---------------------

def _prelu(name: str, shared: bool = True) -> L.PReLU:
    return L.PReLU(shared_axes=[1, 2] if shared else None, name=name)


def _conv(x, filters: int, k: int, name: str, n: int):
    return _prelu(f"prelu{n}")(L.Conv2D(filters, k, padding="valid", name=name)(x))


def _pnet() -> keras.Model:
    """mtcnn.network.pnet.PNet: fully convolutional, any image size (the proposal stage)."""
    x = inp = keras.Input((None, None, 3), name="image")
    x = L.MaxPooling2D(2, 2, padding="same", name="maxpooling1")(_conv(x, 10, 3, "conv1", 1))
    x = _conv(_conv(x, 16, 3, "conv2", 2), 32, 3, "conv3", 3)
    return keras.Model(inp, [L.Conv2D(4, 1, name="conv4-1")(x), L.Conv2D(2, 1, activation="softmax", name="conv4-2")(x)],
                       name="pnet")


def _rnet() -> keras.Model:
    x = inp = keras.Input((24, 24, 3), name="image")
    x = L.MaxPooling2D(3, 2, padding="same", name="maxpooling1")(_conv(x, 28, 3, "conv1", 1))
    x = L.MaxPooling2D(3, 2, padding="valid", name="maxpooling2")(_conv(x, 48, 3, "conv2", 2))
    x = L.Flatten(name="flatten3")(L.Permute((2, 1, 3), name="permute")(_conv(x, 64, 2, "conv3", 3)))
    x = _prelu("prelu4", shared=False)(L.Dense(128, name="fc4")(x))
    return keras.Model(inp, [L.Dense(4, name="fc5-1")(x), L.Dense(2, activation="softmax", name="fc5-2")(x)],
                       name="rnet")


def _onet() -> keras.Model:
    x = inp = keras.Input((48, 48, 3), name="image")
    x = L.MaxPooling2D(3, 2, padding="same", name="maxpooling1")(_conv(x, 32, 3, "conv1", 1))
    x = L.MaxPooling2D(3, 2, padding="valid", name="maxpooling2")(_conv(x, 64, 3, "conv2", 2))
    x = L.MaxPooling2D(2, 2, padding="same", name="maxpooling3")(_conv(x, 64, 3, "conv3", 3))
    x = L.Flatten(name="flatten4")(L.Permute((2, 1, 3), name="permute")(_conv(x, 128, 2, "conv4", 4)))
    x = _prelu("prelu5", shared=False)(L.Dense(256, name="fc5")(x))
    outs = [L.Dense(4, name="fc6-1")(x), L.Dense(10, name="fc6-2")(x), L.Dense(2, activation="softmax", name="fc6-3")(x)]
    return keras.Model(inp, outs, name="onet")


def _with_weights(model: keras.Model, path) -> keras.Model:
    import joblib  # mtcnn's own loader: joblib.load of an lz4-compressed list, in layer order
    model.set_weights(joblib.load(path))
    return model


def mtcnn_pnet(ctx: BuildContext) -> None:
    _with_weights(_pnet(), ctx.file("pnet.lz4")).save(ctx.out / "pnet.keras")


def mtcnn_rnet_savedmodel(ctx: BuildContext) -> None:
    _export(_with_weights(_rnet(), ctx.file("rnet.lz4")), ctx, "rnet")


def mtcnn_onet(ctx: BuildContext) -> None:
    _with_weights(_onet(), ctx.file("onet.lz4")).save(ctx.out / "onet.keras")
