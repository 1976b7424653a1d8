"""The PyTorch frontend: TorchScript in, ONNX out, torch as the reference; typed errors otherwise."""
from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.pytorch import load

from ..conftest import CNN_SHAPE, SmallCnn


def test_torchscript_is_exported_and_reference_is_torch(models, tmp_path):
    shutil.copy(models / "cnn.pth", tmp_path / "model.pth")
    model = load(tmp_path, "[[1, 3, 32, 32]]")
    assert [i.name for i in model.inputs] == ["input0"]
    assert model.outputs[0].shape == (1, 10)
    assert {n.op_type for n in model.onnx_model.graph.node} >= {"Conv", "Relu", "Gemm"}
    x = np.random.default_rng(1).standard_normal(CNN_SHAPE).astype(np.float32)
    want = torch.jit.load(str(models / "cnn.pth"))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model.reference({"input0": x})[0], want, rtol=1e-6)
    assert model.converters["torch"] == "2.13.0"


def test_dict_form_names_inputs(models, tmp_path):
    shutil.copy(models / "cnn.pth", tmp_path / "model.pt")
    assert [i.name for i in load(tmp_path, "{'image': [1, 3, 32, 32]}").inputs] == ["image"]


def test_needs_data_input_config(models, tmp_path):
    shutil.copy(models / "cnn.pth", tmp_path / "model.pth")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert "DataInputConfig" in err.value.message and "[[1,3,224,224]]" in err.value.hint


def test_wrong_shape_is_reported_with_the_declared_shape(models, tmp_path):
    shutil.copy(models / "two.pth", tmp_path / "model.pth")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, "[[2, 8], [2, 7]]")
    assert err.value.stage == "convert" and "fails on inputs of the declared shapes" in err.value.message
    assert "input1 [2, 7]" in err.value.hint


def test_state_dict_is_refused_with_how_to_trace(tmp_path):
    torch.save(SmallCnn().state_dict(), tmp_path / "model.pth")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, "[[1, 3, 32, 32]]")
    assert "torch.save() pickle" in err.value.message and "torch.jit.trace" in err.value.hint


def test_two_pth_files_are_refused(models, tmp_path):
    shutil.copy(models / "cnn.pth", tmp_path / "a.pth")
    shutil.copy(models / "cnn.pth", tmp_path / "b.pth")
    with pytest.raises(CompilationError, match="exactly one .pth or .pt"):
        load(tmp_path, "[[1, 3, 32, 32]]")


def test_unexportable_operator_is_named(tmp_path):
    class Histogram(torch.nn.Module):
        def forward(self, x):
            return torch.histc(x, bins=4)

    torch.jit.trace(Histogram(), torch.randn(1, 8)).save(str(tmp_path / "model.pth"))
    with pytest.raises(CompilationError) as err:
        load(tmp_path, "[[1, 8]]")
    assert err.value.stage == "convert" and "histc" in err.value.message
    assert "dynamo exporter, tried next, failed too" in err.value.hint and "histc" in err.value.hint


def test_operator_only_the_dynamo_exporter_knows_is_exported_with_it(tmp_path):
    """torch.onnx's TorchScript exporter has no FFT; the second exporter (torch.export + dynamo) has."""
    class Spectrum(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).abs()

    torch.jit.trace(Spectrum(), torch.randn(1, 8)).save(str(tmp_path / "model.pth"))
    model = load(tmp_path, "[[1, 8]]")
    assert "dynamo exporter" in model.notes[0] and "fft" in model.notes[0]
    x = np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)
    got = ort.InferenceSession(model.onnx_model.SerializeToString()).run(None, {"input0": x})[0]
    np.testing.assert_allclose(got, np.abs(np.fft.fft(x)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.reference({"input0": x})[0], got, rtol=1e-5, atol=1e-5)


def test_dtype_option_types_untyped_inputs(tmp_path):
    """CompilerOptions DTYPE (here int64, AWS's "long") applies to inputs DataInputConfig leaves untyped."""
    emb = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Flatten())
    torch.jit.trace(emb.eval(), torch.zeros(1, 6, dtype=torch.long)).save(str(tmp_path / "model.pth"))
    model = load(tmp_path, "[[1, 6]]", "int64")
    assert model.inputs[0].dtype == "int64"
    ids = np.array([[0, 1, 2, 3, 4, 19]], np.int64)
    want = emb(torch.from_numpy(ids)).detach().numpy()
    np.testing.assert_allclose(model.reference({"input0": ids})[0], want)
    with pytest.raises(CompilationError):  # float ids are not what the embedding takes
        load(tmp_path, "[[1, 6]]", "float32")


@pytest.fixture(scope="module")
def exported_cnn(tmp_path_factory):
    """The small CNN as a torch.export archive (.pt2), and the module it came from."""
    torch.manual_seed(0)
    cnn = SmallCnn().eval()
    folder = tmp_path_factory.mktemp("pt2")
    torch.export.save(torch.export.export(cnn, (torch.randn(*CNN_SHAPE),)), str(folder / "model.pt2"))
    return folder, cnn


def test_torch_export_archive_compiles_with_its_own_shapes(exported_cnn, tmp_path):
    from modelkiln.compiler import CompileJob, compile_job
    from modelkiln.runtime import Model

    folder, cnn = exported_cnn
    model = load(folder, None)  # the archive records its shapes: no DataInputConfig needed
    assert [(i.name, i.shape, i.dtype) for i in model.inputs] == [("input0", CNN_SHAPE, "float32")]
    assert "torch.export" in model.notes[0]
    report = compile_job(CompileJob(model=folder / "model.pt2", framework="PYTORCH", output_dir=tmp_path,
                                    data_input_config='{"image": [1, 3, 32, 32]}', target_device="ml_c5",
                                    compiler_options='{"kiln-backend": "onnxruntime"}'))
    assert report.winner() is not None and report.winner().status == "selected"
    x = np.random.default_rng(2).standard_normal(CNN_SHAPE).astype(np.float32)
    got = Model(tmp_path / "model.tar.gz").run({"image": x})[0]
    np.testing.assert_allclose(got, cnn(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-6)


def test_torch_export_archive_refuses_other_shapes_and_other_files(exported_cnn, tmp_path):
    folder, _ = exported_cnn
    with pytest.raises(CompilationError, match=r"exported for \[\[1, 3, 32, 32\]\]"):
        load(folder, "[[1, 3, 64, 64]]")
    (tmp_path / "model.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CompilationError, match="not a torch.export archive") as caught:
        load(tmp_path, None)
    assert "torch.export.save" in caught.value.hint


class EncoderBlock(torch.nn.Module):
    """torchvision's ViT block: nn.MultiheadAttention, which under no_grad in eval mode runs (and traces as)
    the fused aten::_native_multi_head_attention."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(dim)
        self.self_attention = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class TinyVit(torch.nn.Module):
    """vit_b_16 in miniature: patch-embedding conv, class token, position embedding, encoder blocks, head."""

    def __init__(self, image: int = 32, patch: int = 8, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv_proj = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = torch.nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.layers = torch.nn.Sequential(EncoderBlock(dim), EncoderBlock(dim))
        self.ln = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


class TinyBert(torch.nn.Module):
    """A BERT-style encoder: embeddings, nn.TransformerEncoder (fused layers; a padding mask makes it run on nested
    tensors), last hidden state and a pooled output."""

    def __init__(self, vocab: int = 50, seq: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, dim)
        self.positions = torch.nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.norm = torch.nn.LayerNorm(dim)
        layer = torch.nn.TransformerEncoderLayer(dim, 4, 4 * dim, activation="gelu", batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2)
        self.pooler = torch.nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        x = self.norm(self.tokens(input_ids) + self.positions)
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return x, torch.tanh(self.pooler(x[:, 0]))


def _traced_with_fast_path(model: torch.nn.Module, example: tuple, path, fused: str) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    assert traced.inlined_graph.findAllNodes(fused, True), f"the trace should hold {fused}"
    traced.save(str(path))


def _compile_for_ml_c5(folder, out, config: str, options: str | None = None):
    from modelkiln.compiler import CompileJob, compile_job

    report = compile_job(CompileJob(model=folder / "model.pth", framework="PYTORCH", output_dir=out,
                                    data_input_config=config, target_device="ml_c5", compiler_options=options))
    winner = report.winner()
    assert winner is not None and winner.check.status == "verified", [(c.backend, c.status, c.reason)
                                                                      for c in report.candidates]
    return report


def test_vit_with_fused_attention_compiles_for_ml_c5(tmp_path):
    from modelkiln.runtime import Model

    torch.manual_seed(0)
    vit = TinyVit().eval()
    (tmp_path / "in").mkdir()
    _traced_with_fast_path(vit, (torch.randn(1, 3, 32, 32),), tmp_path / "in" / "model.pth",
                           "aten::_native_multi_head_attention")
    report = _compile_for_ml_c5(tmp_path / "in", tmp_path, "[[1, 3, 32, 32]]")
    assert "aten::_native_multi_head_attention written out" in report.notes[-1]
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = vit(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(Model(tmp_path / "model.tar.gz").run([x])[0], want, rtol=1e-4, atol=1e-5)


def test_bert_encoder_with_padding_mask_compiles_for_ml_c5(tmp_path):
    from modelkiln.runtime import Model

    torch.manual_seed(0)
    bert = TinyBert().eval()
    ids = torch.randint(0, 50, (2, 16))
    (tmp_path / "in").mkdir()
    _traced_with_fast_path(bert, (ids, torch.ones(2, 16, dtype=torch.long)), tmp_path / "in" / "model.pth",
                           "aten::_transformer_encoder_layer_fwd")
    config = '{"input_ids": {"shape": [2, 16], "dtype": "int64"}, "attention_mask": [2, 16]}'
    _compile_for_ml_c5(tmp_path / "in", tmp_path, config, '{"DTYPE": "int64", "kiln-backend": "onnxruntime"}')
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 11:] = 0  # the second sentence is padded
    with torch.no_grad():
        hidden, pooled = bert(ids, mask)
    got = Model(tmp_path / "model.tar.gz").run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    np.testing.assert_allclose(got[0], hidden.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], pooled.numpy(), rtol=1e-4, atol=1e-5)


class AttentionVariants(torch.nn.Module):
    """The fast-path kernels with what the symbolics must honour: returned weights, masks, post-norm ReLU."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.attention = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=variant == "pre-norm")
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor):
        causal = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1)
        if self.variant == "weights":
            return self.attention(x, x, x, average_attn_weights=False)
        if self.variant == "averaged causal":
            return self.attention(x, x, x, attn_mask=causal)
        return self.encoder(x, mask=causal)


@pytest.mark.parametrize("variant, fused", [
    ("weights", "aten::_native_multi_head_attention"), ("averaged causal", "aten::_native_multi_head_attention"),
    ("pre-norm", "aten::_transformer_encoder_layer_fwd"), ("post-norm", "aten::_transformer_encoder_layer_fwd"),
])
def test_fused_transformer_kernels_export_as_torch_computes_them(variant, fused, tmp_path):
    torch.manual_seed(0)
    _traced_with_fast_path(AttentionVariants(variant), (torch.randn(2, 7, 32),), tmp_path / "model.pth", fused)
    model = load(tmp_path, "[[2, 7, 32]]")
    x = np.random.default_rng(5).standard_normal((2, 7, 32)).astype(np.float32)
    got = ort.InferenceSession(model.onnx_model.SerializeToString()).run(None, {"input0": x})
    for out, want in zip(got, model.reference({"input0": x}), strict=True):
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


class MiniVad(torch.nn.Module):
    """silero-vad's interface in miniature: forward(x, sr: int) picks a branch by sample rate and keeps an RNN
    state and the last sample rate between calls."""

    def __init__(self) -> None:
        super().__init__()
        self.stft_16k = torch.nn.Conv1d(1, 8, 16, stride=8)
        self.stft_8k = torch.nn.Conv1d(1, 8, 8, stride=4)
        self.rnn = torch.nn.LSTMCell(8, 8)
        self.head = torch.nn.Linear(8, 1)
        self._state = torch.zeros(0)
        self._last_sr = 0

    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        if sr != 16000 and sr != 8000:
            raise ValueError("sr must be 8000 or 16000")
        if self._last_sr != 0 and self._last_sr != sr:
            self._state = torch.zeros(0)
        if self._state.numel() == 0:
            self._state = torch.zeros(2, x.shape[0], 8)
        if sr == 16000:
            features = self.stft_16k(x.unsqueeze(1)).mean(-1)
        else:
            features = self.stft_8k(x.unsqueeze(1)).mean(-1)
        h, c = self.rnn(features, (self._state[0], self._state[1]))
        self._state = torch.stack([h, c])
        self._last_sr = sr
        return torch.sigmoid(self.head(h))


@pytest.fixture(scope="module")
def mini_vad(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vad")
    torch.jit.script(MiniVad().eval()).save(str(folder / "model.pth"))
    return folder


@pytest.mark.parametrize("option, samples, sr", [('{"sr": 16000}', 512, 16000), ("[8000]", 256, 8000)])
def test_forward_args_bind_a_scripted_sample_rate(mini_vad, tmp_path, option, samples, sr):
    from modelkiln.runtime import Model

    report = _compile_for_ml_c5(mini_vad, tmp_path, f"[[1, {samples}]]",
                                '{"kiln-forward-args": %s, "kiln-backend": "onnxruntime"}' % option)
    assert f"forward() compiled for sr={sr}" in " ".join(report.notes)
    assert "forward() writes module state (_last_sr, _state): compiled as one call from the state the file " \
           "holds; the compiled model keeps no state between calls." in report.notes  # every write folded away
    compiled = Model(tmp_path / "model.tar.gz")
    for seed in (6, 7):  # the compiled model is each time one call from the state the file holds
        x = np.random.default_rng(seed).standard_normal((1, samples)).astype(np.float32)
        with torch.no_grad():
            want = torch.jit.load(str(mini_vad / "model.pth"))(torch.from_numpy(x), sr).numpy()
        np.testing.assert_allclose(compiled.run([x])[0], want, rtol=1e-4, atol=1e-6)


def test_missing_forward_args_say_which_parameters_and_how(mini_vad, tmp_path):
    from modelkiln.compiler import CompileJob, compile_job

    with pytest.raises(CompilationError) as err:
        compile_job(CompileJob(model=mini_vad / "model.pth", framework="PYTORCH", output_dir=tmp_path,
                               data_input_config="[[1, 512]]", target_device="ml_c5"))
    assert err.value.stage == "convert"
    assert "forward(x: Tensor, sr: int) takes sr (int)" in err.value.message
    assert '{"kiln-forward-args": {"sr": <int>}}' in err.value.hint


@pytest.mark.parametrize("value, field", [
    ("16000", "kiln-forward-args"),  # not an object or list: refused when the options are parsed
    ('{"sr": {"hz": 16000}}', "kiln-forward-args.sr"),
    ('{"sr": "16k"}', "kiln-forward-args.sr"),  # not the int the schema declares
    ('{"rate": 16000}', "kiln-forward-args.rate"),  # no such parameter
    ("[16000, 1]", "kiln-forward-args"),  # more values than non-tensor parameters
])
def test_malformed_forward_args_name_the_field(mini_vad, tmp_path, value, field):
    from modelkiln.compiler import CompileJob, compile_job

    with pytest.raises(ValidationError) as err:
        compile_job(CompileJob(model=mini_vad / "model.pth", framework="PYTORCH", output_dir=tmp_path,
                               data_input_config="[[1, 512]]", target_device="ml_c5",
                               compiler_options='{"kiln-forward-args": %s}' % value))
    assert err.value.field == f"OutputConfig.CompilerOptions.{field}"


def test_an_exception_the_script_raises_is_reported_by_its_own_words(mini_vad):
    with pytest.raises(CompilationError) as err:
        load(mini_vad, "[[1, 512]]", None, {"kiln-forward-args": {"sr": 44100}})
    assert "fails on inputs of the declared shapes" in err.value.message
    assert "sr must be 8000 or 16000" in err.value.message


def test_a_jit_file_is_torchscript(tmp_path):
    """Silero and others ship TorchScript as .jit."""
    torch.jit.trace(nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval(), torch.randn(1, 4)).save(str(tmp_path / "m.jit"))
    model = load(tmp_path, "[[1, 4]]")
    assert model.inputs[0].shape == (1, 4) and model.outputs[0].shape == (1, 3)
