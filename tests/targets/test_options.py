"""CompilerOptions parsing: JSON or AWS-docs Python-dict syntax, named fields on every error."""
from __future__ import annotations

import pytest

from modelkiln.errors import ValidationError
from modelkiln.targets.options import CompilerOptions, parse_compiler_options


def _error(text: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_compiler_options(text)
    return info.value


@pytest.mark.parametrize(
    "json_text,python_text",
    [
        ('{"mcpu": "cortex-a72", "mattr": ["+neon"]}', "{'mcpu': 'cortex-a72', 'mattr': ['+neon']}"),
        ('{"mcpu": "skylake-avx512", "mattr": ["+neon"]}', "{'mcpu': 'skylake-avx512', 'mattr': ['+neon']}"),
        ('{"DTYPE": "long", "kiln-backend": "iree"}', "{'DTYPE': 'long', 'kiln-backend': 'iree'}"),
    ],
)
def test_json_and_python_dict_style_agree(json_text, python_text):
    from_json = parse_compiler_options(json_text)
    from_python = parse_compiler_options(python_text)
    assert from_json == from_python
    assert from_json != CompilerOptions()


def test_mcpu_and_mattr():
    options = parse_compiler_options('{"mcpu": "cortex-a72", "mattr": ["+neon", "-crc"]}')
    assert options.mcpu == "cortex-a72"
    assert options.mattr == ("+neon", "-crc")
    assert options.precision == "float32" and options.input_dtype is None
    assert options.backend is None
    assert options.recorded == {}


def test_aws_docs_example():
    options = parse_compiler_options("{'mcpu': 'skylake-avx512'}")
    assert options.mcpu == "skylake-avx512"
    assert options.mattr == ()


@pytest.mark.parametrize("text", ['{"mattr": "+neon,+vfp4"}', '{"mattr": " +neon , +vfp4 "}'])
def test_mattr_as_comma_string(text):
    assert parse_compiler_options(text).mattr == ("+neon", "+vfp4")


@pytest.mark.parametrize("value", ["neon", "+", "x+neon"])
def test_mattr_item_without_sign_is_rejected(value):
    error = _error('{"mattr": ["+neon", "%s"]}' % value)
    assert error.field == "OutputConfig.CompilerOptions.mattr"


@pytest.mark.parametrize("text", ['{"mattr": [1]}', '{"mattr": 5}', '{"mattr": {"+neon": 1}}'])
def test_mattr_of_wrong_type_is_rejected(text):
    assert _error(text).field == "OutputConfig.CompilerOptions.mattr"


@pytest.mark.parametrize("text", ['{"mcpu": ""}', '{"mcpu": 7}', '{"mcpu": ["cortex-a72"]}'])
def test_bad_mcpu_is_rejected(text):
    assert _error(text).field == "OutputConfig.CompilerOptions.mcpu"


@pytest.mark.parametrize("key", ["DTYPE", "dtype"])
@pytest.mark.parametrize("value, dtype", [("float", "float32"), ("float32", "float32"), ("int64", "int64"),
                                          ("long", "int64"), ("LONG", "int64")])
def test_dtype_is_the_input_dtype_with_aws_aliases(key, value, dtype):
    assert parse_compiler_options('{"%s": "%s"}' % (key, value)).input_dtype == dtype


@pytest.mark.parametrize("value", ['"int3"', '"bfloat16"', "16", "null"])
def test_bad_dtype_names_the_field(value):
    error = _error('{"DTYPE": %s}' % value)
    assert error.field == "OutputConfig.CompilerOptions.DTYPE"


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float32", "int8", "auto"])
def test_kiln_precision(precision):
    assert parse_compiler_options('{"kiln-precision": "%s"}' % precision).precision == precision


@pytest.mark.parametrize("value", ['"int4"', '"FLOAT16"', "16"])
def test_bad_kiln_precision_names_the_field(value):
    assert _error('{"kiln-precision": %s}' % value).field == "OutputConfig.CompilerOptions.kiln-precision"


@pytest.mark.parametrize("key", ["mcpus", "opt-level", "precision"])
def test_unknown_key_names_the_key(key):
    error = _error('{"mcpu": "cortex-a72", "%s": 1}' % key)
    assert error.field == f"OutputConfig.CompilerOptions.{key}"


@pytest.mark.parametrize(
    "text",
    [
        "{mcpu:",
        '{"mcpu": "cortex-a72"',
        "{'mcpu': 'a', }}",
        "mcpu=cortex-a72",
        '{"a" + "b": 1}',
        pytest.param("{[1]: 2}", id="unhashable-key"),  # a Python literal that cannot be built
        pytest.param("[" * 100_000, id="deep-nesting"),  # exhausts the JSON parser's recursion
    ],
)
def test_malformed_text_names_compiler_options(text):
    assert _error(text).field == "OutputConfig.CompilerOptions"


@pytest.mark.parametrize("text", ['["mcpu", "cortex-a72"]', '"cortex-a72"', "42", "null", "{1, 2}"])
def test_non_object_is_rejected(text):
    assert _error(text).field == "OutputConfig.CompilerOptions"


def test_recorded_neo_options():
    text = (
        "{'gpu-code': 'sm_72', 'trt-ver': '6.0.1', 'cuda-ver': '10.1', 'ANDROID_PLATFORM': 28,"
        " 'class_labels': 'imagenet_labels_1000.txt', 'signature_def_key': 'serving_default',"
        " 'output_names': ['out'], 'mcpu': 'cortex-a53'}"
    )
    options = parse_compiler_options(text)
    assert options.recorded == {
        "gpu-code": "sm_72",
        "trt-ver": "6.0.1",
        "cuda-ver": "10.1",
        "ANDROID_PLATFORM": 28,
        "class_labels": "imagenet_labels_1000.txt",
        "signature_def_key": "serving_default",
        "output_names": ["out"],
    }
    assert options.mcpu == "cortex-a53"
    assert "mcpu" not in options.recorded


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "iree"])
def test_kiln_backend(backend):
    assert parse_compiler_options('{"kiln-backend": "%s"}' % backend).backend == backend


@pytest.mark.parametrize("value", ['"tensorrt"', '"ONNXRUNTIME"', "null", '["iree"]'])
def test_bad_kiln_backend(value):
    assert _error('{"kiln-backend": %s}' % value).field == "OutputConfig.CompilerOptions.kiln-backend"


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t", "{}", "{'mattr': []}", '{"mcpu": null}'])
def test_absent_options_give_defaults(text):
    options = parse_compiler_options(text)
    assert options == CompilerOptions()
    assert options.mcpu is None
    assert options.mattr == ()
    assert options.precision == "float32" and options.input_dtype is None
    assert options.backend is None
    assert options.recorded == {}


@pytest.mark.parametrize("text, value", [
    ('{"kiln-forward-args": {"sr": 16000}}', {"sr": 16000}),
    ("{'kiln-forward-args': {'sr': 8000, 'mode': 'fast', 'scales': (1.0, 0.5), 'window': None}}",
     {"sr": 8000, "mode": "fast", "scales": [1.0, 0.5], "window": None}),
    ('{"kiln-forward-args": [16000, true]}', [16000, True]),
])
def test_kiln_forward_args_are_recorded_for_the_pytorch_frontend(text, value):
    assert parse_compiler_options(text).recorded == {"kiln-forward-args": value}


@pytest.mark.parametrize("value, field", [
    ("16000", "kiln-forward-args"),
    ('"sr=16000"', "kiln-forward-args"),
    ('{"sr": {"hz": 16000}}', "kiln-forward-args.sr"),
    ('{"sizes": [[1, 2]]}', "kiln-forward-args.sizes"),
    ('{"2sr": 16000}', "kiln-forward-args"),
    ('[16000, {"a": 1}]', "kiln-forward-args[1]"),
])
def test_bad_kiln_forward_args_name_the_field(value, field):
    assert _error('{"kiln-forward-args": %s}' % value).field == f"OutputConfig.CompilerOptions.{field}"


@pytest.mark.parametrize("value, metric, bound", [('{"top1_agreement": 0.99}', "top1_agreement", 0.99),
                                                  ('{"cosine": 1}', "cosine", 1.0),
                                                  ('{"max_rel_err": 0.05}', "max_rel_err", 0.05)])
def test_kiln_accuracy(value, metric, bound):
    budget = parse_compiler_options('{"kiln-accuracy": %s}' % value).accuracy
    assert (budget.metric, budget.bound) == (metric, bound)
    assert budget.met_by(bound) and not budget.met_by(bound * 2 if metric == "max_rel_err" else bound / 2)


@pytest.mark.parametrize("value, field", [
    ("0.99", "kiln-accuracy"), ('{"top5": 0.9}', "kiln-accuracy"), ('{"cosine": 0.9, "top1_agreement": 0.9}', "kiln-accuracy"),
    ('{"cosine": 1.5}', "kiln-accuracy.cosine"), ('{"top1_agreement": "high"}', "kiln-accuracy.top1_agreement"),
    ('{"max_rel_err": 0}', "kiln-accuracy.max_rel_err"), ('{"cosine": true}', "kiln-accuracy.cosine")])
def test_bad_kiln_accuracy_names_the_field(value, field):
    assert _error('{"kiln-accuracy": %s}' % value).field == f"OutputConfig.CompilerOptions.{field}"


def test_kiln_calibration_is_an_s3_uri_of_a_file():
    assert parse_compiler_options('{"kiln-calibration": "s3://b/data/cal.npz"}').calibration == "s3://b/data/cal.npz"
    for value in ('"cal.npz"', '"s3://bucket"', '"s3://bucket/dir/"', "3"):
        assert _error('{"kiln-calibration": %s}' % value).field == "OutputConfig.CompilerOptions.kiln-calibration"
