"""DataInputConfig: every documented form, and a named field on every malformed one."""
from __future__ import annotations

import pytest

from modelkiln.errors import ValidationError
from modelkiln.frontends.base import TensorSpec
from modelkiln.frontends.input_config import parse_data_input_config

FIELD = "InputConfig.DataInputConfig"


def _error(text: str, allow_list: bool = False) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_data_input_config(text, allow_list=allow_list)
    assert info.value.field.startswith(FIELD)
    assert info.value.message
    return info.value


def test_single_input_dict():
    assert parse_data_input_config('{"data": [1,3,224,224]}') == [
        TensorSpec("data", (1, 3, 224, 224), "float32")
    ]


def test_multiple_inputs_keep_their_order():
    specs = parse_data_input_config('{"var2": [1,1,28,28], "var1": [1,5], "a": [7]}')
    assert [s.name for s in specs] == ["var2", "var1", "a"]
    assert [s.shape for s in specs] == [(1, 1, 28, 28), (1, 5), (7,)]
    assert all(s.dtype == "float32" for s in specs)


def test_python_literal_form():
    assert parse_data_input_config("{'input_1': [1, 3, 224, 224], 'input_2': [1, 5]}") == [
        TensorSpec("input_1", (1, 3, 224, 224), "float32"),
        TensorSpec("input_2", (1, 5), "float32"),
    ]


def test_json_and_python_literal_agree():
    assert parse_data_input_config('{"data": [1,3,224,224]}') == parse_data_input_config(
        "{'data': [1, 3, 224, 224]}"
    )


def test_list_form_with_allow_list():
    specs = parse_data_input_config("[[1,3,224,224],[1,5]]", allow_list=True)
    assert specs == [
        TensorSpec("input0", (1, 3, 224, 224), "float32"),
        TensorSpec("input1", (1, 5), "float32"),
    ]


@pytest.mark.parametrize("text", ["[[1,3,224,224],[1,5]]", "[1,3,224,224]"])
def test_list_form_without_allow_list_is_refused(text):
    error = _error(text, allow_list=False)
    assert error.field == FIELD


def test_single_bare_shape_with_allow_list():
    assert parse_data_input_config("[1,3,224,224]", allow_list=True) == [
        TensorSpec("input0", (1, 3, 224, 224), "float32")
    ]


def test_dict_form_is_accepted_with_allow_list_too():
    assert parse_data_input_config('{"x": [2, 2]}', allow_list=True) == [TensorSpec("x", (2, 2), "float32")]


def test_shape_and_dtype_entry():
    specs = parse_data_input_config('{"input_ids": {"shape": [1,128], "dtype": "int64"}, "mask": [1,128]}')
    assert specs == [
        TensorSpec("input_ids", (1, 128), "int64"),
        TensorSpec("mask", (1, 128), "float32"),
    ]


def test_shape_entry_without_dtype_defaults_to_float32():
    assert parse_data_input_config('{"x": {"shape": [3]}}') == [TensorSpec("x", (3,), "float32")]


@pytest.mark.parametrize(
    "dtype,name",
    [("int64", "int64"), ("i8", "int64"), ("float16", "float16"), ("f4", "float32"),
     ("uint8", "uint8"), ("bool", "bool"), ("int32", "int32")],
)
def test_dtype_is_normalized_to_numpy_name(dtype, name):
    [spec] = parse_data_input_config('{"x": {"shape": [1], "dtype": "%s"}}' % dtype)
    assert spec.dtype == name


def test_shape_and_dtype_entries_in_list_form():
    specs = parse_data_input_config("[{'shape': [1, 8], 'dtype': 'int32'}, [1, 5]]", allow_list=True)
    assert specs == [TensorSpec("input0", (1, 8), "int32"), TensorSpec("input1", (1, 5), "float32")]


@pytest.mark.parametrize("dtype", ['"floaty"', '"int3"', "5", "[1]"])
def test_bad_dtype(dtype):
    error = _error('{"x": {"shape": [1], "dtype": %s}}' % dtype)
    assert error.field == f"{FIELD}.x.dtype"


def test_null_dtype_is_refused():
    # JSON null is not a dtype name; numpy would read None as float64.
    error = _error('{"x": {"shape": [1], "dtype": null}}')
    assert error.field == f"{FIELD}.x.dtype"


@pytest.mark.parametrize(
    "text",
    [
        '{"data": [1, 3.0, 224]}',
        '{"data": [1, "3", 224]}',
        '{"data": "1,3,224,224"}',
        '{"data": 224}',
        '{"data": null}',
        '{"data": [[1, 3]]}',
    ],
)
def test_non_integer_dims(text):
    assert _error(text).field == f"{FIELD}.data"


@pytest.mark.parametrize("dims", ["[1, 0, 224]", "[1, -3, 224]", "[0]"])
def test_zero_or_negative_dims(dims):
    error = _error('{"data": %s}' % dims)
    assert error.field == f"{FIELD}.data"


@pytest.mark.parametrize("dims", ["[true, 3]", "[1, false]"])
def test_bools_are_not_dims(dims):
    assert _error('{"data": %s}' % dims).field == f"{FIELD}.data"


def test_bools_are_not_dims_in_list_form():
    assert _error("[[True, 3]]", allow_list=True).field.startswith(FIELD)
    assert _error("[[1, 0]]", allow_list=True).field == f"{FIELD}.input0"


@pytest.mark.parametrize(
    "entry",
    ['{"shape": [1], "dtype": "int64", "layout": "NCHW"}', '{"dtype": "int64"}', "{}"],
)
def test_malformed_shape_entry(entry):
    assert _error('{"x": %s}' % entry).field == f"{FIELD}.x"


@pytest.mark.parametrize("text", ["{}", "[]"])
def test_no_inputs(text):
    assert _error(text, allow_list=True).field == FIELD


@pytest.mark.parametrize(
    "text",
    ['{"data": [1,3,224,224]', "{data: [1,3]}", "data=[1,3]", '{"data": [1,3]}}',
     pytest.param("{[1]: [1]}", id="unhashable-key")],
)
def test_malformed_text(text):
    assert _error(text).field == FIELD


@pytest.mark.parametrize("text", ['"data"', "42", "null", "{1, 3}"])
def test_non_object(text):
    assert _error(text).field == FIELD


@pytest.mark.parametrize("text", [None, "", "   ", "\n"])
def test_absent_is_none(text):
    assert parse_data_input_config(text) is None
    assert parse_data_input_config(text, allow_list=True) is None
