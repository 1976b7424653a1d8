"""`kiln` as a user runs it: real processes, exit codes, progress, reports, and no backtraces."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

KILN = [sys.executable, "-m", "modelkiln.cli"]


def kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KILN, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env} if env else None)


def test_compile_then_run(models, tmp_path):
    out = tmp_path / "out"
    proc = kiln("compile", "--model", str(models / "cnn_pth.tar.gz"), "--framework", "pytorch",
                "--input-config", "[[1,3,32,32]]", "--target-device", "ml_c5", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    for stage in ("fetch", "convert", "compile", "verify", "select", "package"):
        assert f"[{stage}]" in proc.stderr
    assert "Selected" in proc.stdout and "verified" in proc.stdout
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32, 32), np.float32))
    run = kiln("run", str(out / "model.tar.gz"), "--input", str(tmp_path / "x.npy"), "--output-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "shape [1, 10]" in run.stdout
    probs = np.load(tmp_path / "output0.npy")
    assert probs.shape == (1, 10) and abs(float(probs.sum()) - 1.0) < 1e-5  # the model ends in softmax


def test_json_report_and_emulated_run(models, tmp_path):
    proc = kiln("compile", "--quiet", "--json", "--model", str(models / "cnn_onnx.tar.gz"), "--framework", "ONNX",
                "--target-platform", "Os=LINUX,Arch=ARM64", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    report = json.loads(proc.stdout)
    assert report["target"]["arch"] == "aarch64" and report["selected"] == "onnxruntime"
    run = kiln("run", str(tmp_path / "model.tar.gz"), "--random", "--emulate")
    assert run.returncode == 0, run.stderr
    assert "under qemu-user" in run.stdout and "prob: shape [1, 10]" in run.stdout
    refused = kiln("run", str(tmp_path / "model.tar.gz"), "--random")
    assert refused.returncode == 1 and "built for aarch64" in refused.stderr


@pytest.mark.parametrize("args, code, words", [
    (["--target-device", "ml_inf1"], 2, ["invalid OutputConfig.TargetDevice", "Neuron"]),
    (["--target-device", "ml_z9"], 2, ["unknown TargetDevice"]),
    (["--target-device", "rasp4b", "--compiler-options", "{'mcpu': 'cortex-a99'}"], 2,
     ["invalid OutputConfig.CompilerOptions.mcpu", "cortex-a72"]),
    (["--target-platform", '{"Os":"LINUX","Arch":"SPARC"}'], 2, ["OutputConfig.TargetPlatform.Arch"]),
    (["--target-device", "ml_c5", "--input-config", "{'input0': [1, 3, 99]}"], 1,
     ["convert failed", "fix:"]),
    (["--target-device", "ml_c5", "--compiler-options", "{mcpu"], 2, ["OutputConfig.CompilerOptions"]),
])
def test_bad_requests_give_typed_errors_not_backtraces(models, tmp_path, args, code, words):
    proc = kiln("compile", "--model", str(models / "cnn_pth.tar.gz"), "--framework", "PYTORCH",
                "--input-config", "[[1,3,32,32]]", "--output", str(tmp_path), *args)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in proc.stderr
    assert not (tmp_path / "model.tar.gz").exists()


def test_broken_archive(tmp_path):
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(__file__, arcname="model.onnx")
    broken = tmp_path / "model.tar.gz"
    broken.write_bytes(good.read_bytes()[:40])
    proc = kiln("compile", "--model", str(broken), "--framework", "ONNX", "--target-device", "ml_c5",
                "--output", str(tmp_path / "o"))
    assert proc.returncode == 1 and "fetch failed" in proc.stderr and "corrupt or truncated" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_targets_lists_the_catalog():
    proc = kiln("targets")
    assert proc.returncode == 0
    assert "rasp4b" in proc.stdout and "unsupported: AWS Inferentia" in proc.stdout


def test_readme_matrix_is_current():
    from modelkiln.compiler.matrix import render_markdown

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start, end = "<!-- matrix:start -->", "<!-- matrix:end -->"
    assert start in readme and end in readme
    current = readme.split(start, 1)[1].split(end, 1)[0]
    assert current.strip() == render_markdown(), "run `make readme` to regenerate the README's support matrix"


def test_accounts_create_prints_credentials_and_keeps_them_private(tmp_path):
    proc = kiln("accounts", "create", "--data-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    creds = json.loads(proc.stdout)
    assert set(creds) == {"AccountId", "AccessKeyId", "SecretAccessKey"}
    assert len(creds["AccountId"]) == 12 and creds["AccountId"].isdigit()
    keys = tmp_path / "keys.json"
    assert keys.stat().st_mode & 0o777 == 0o600
    second = json.loads(kiln("accounts", "create", "--data-dir", str(tmp_path), "--json").stdout)
    assert second["AccountId"] != creds["AccountId"]
    listing = json.loads(kiln("accounts", "list", "--data-dir", str(tmp_path), "--json").stdout)
    assert {a["AccountId"]: a["AccessKeyIds"] for a in listing} == {
        creds["AccountId"]: [creds["AccessKeyId"]], second["AccountId"]: [second["AccessKeyId"]]}
    assert creds["SecretAccessKey"] not in json.dumps(listing)



def test_settings_come_from_flags_environment_and_config_file(tmp_path):
    from_env = tmp_path / "from-env"
    assert kiln("accounts", "create", "--json", env={"KILN_DATA_DIR": str(from_env)}).returncode == 0
    assert (from_env / "keys.json").is_file()
    from_file = tmp_path / "from-file"
    (tmp_path / "kiln.toml").write_text(f'data_dir = "{from_file}"\nport = 9999\n')
    assert kiln("accounts", "create", "--config", str(tmp_path / "kiln.toml")).returncode == 0
    assert (from_file / "keys.json").is_file()
    flag_wins = tmp_path / "from-flag"
    assert kiln("accounts", "create", "--data-dir", str(flag_wins), env={"KILN_DATA_DIR": str(from_env),
                                                                          "KILN_CONFIG": str(tmp_path / "kiln.toml")}
                ).returncode == 0
    assert (flag_wins / "keys.json").is_file()
    (tmp_path / "bad.toml").write_text('prot = 1\n')
    bad = kiln("accounts", "list", "--config", str(tmp_path / "bad.toml"))
    assert bad.returncode == 2 and "prot" in bad.stderr and "port" in bad.stderr


def test_framework_version_kiln_cannot_read_is_refused(models, tmp_path):
    proc = kiln("compile", "--model", str(models / "cnn_onnx.tar.gz"), "--framework", "ONNX", "--framework-version",
                "2.0", "--target-device", "ml_c5", "--output", str(tmp_path))
    assert proc.returncode == 2 and "InputConfig.FrameworkVersion" in proc.stderr and "ONNX 1.x" in proc.stderr
    assert not (tmp_path / "model.tar.gz").exists()
