"""FrameworkVersion: versions Kiln can read are accepted, others refused naming the field and the reason."""
from __future__ import annotations

from importlib import metadata

import pytest

from modelkiln.errors import ValidationError
from modelkiln.frontends import VERSION_RULES, check_framework_version


@pytest.mark.parametrize("framework, version", [
    ("PYTORCH", "1.8"), ("PYTORCH", "2.0"), ("TENSORFLOW", "1.15"), ("TENSORFLOW", "2.9"), ("KERAS", "2.2.4"),
    ("MXNET", "1.8"), ("XGBOOST", "1.7"), ("SKLEARN", "0.23"), ("ONNX", "1.5"), ("TFLITE", "2.4"),
    ("DARKNET", "0.2.5"), ("PYTORCH", None),
])
def test_readable_versions_pass(framework, version):
    check_framework_version(framework, version)


@pytest.mark.parametrize("framework, version, words", [
    ("MXNET", "2.0", "MXNET 1.x"),
    ("KERAS", "1.2", "KERAS 2.x, 3.x"),
    ("PYTORCH", "3.1", "PYTORCH 1.x, 2.x"),
    ("TENSORFLOW", "2.99", "newer than the tensorflow-cpu"),
    ("XGBOOST", "3.99", "newer than the xgboost-cpu"),
])
def test_unreadable_versions_are_refused(framework, version, words):
    with pytest.raises(ValidationError) as caught:
        check_framework_version(framework, version)
    assert caught.value.field == "InputConfig.FrameworkVersion" and words in caught.value.message


def test_the_cap_is_the_installed_reader():
    installed = metadata.version(VERSION_RULES["PYTORCH"].reader)
    major, minor = installed.split(".")[:2]
    check_framework_version("PYTORCH", f"{major}.{minor}")
    with pytest.raises(ValidationError):
        check_framework_version("PYTORCH", f"{major}.{int(minor) + 1}")
