"""A real `kiln serve` process on loopback for end-to-end tests, and real boto3 clients for it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

KILN = str(Path(sys.executable).with_name("kiln"))
TERMINAL = {"COMPLETED", "FAILED", "STOPPED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Account:
    account_id: str
    access_key_id: str
    secret_access_key: str

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/kiln-test"

    def env(self, endpoint: str) -> dict[str, str]:
        """Environment for a real `aws` CLI process signing as this account."""
        return {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "AWS_ENDPOINT_URL": endpoint}


@dataclass
class KilnServer:
    data_dir: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, timeout_s: float = 90) -> KilnServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([KILN, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
                                      *self.args], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln serve exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/_kiln/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"kiln serve did not answer within {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def create_account(self) -> Account:
        out = subprocess.run([KILN, "accounts", "create", "--data-dir", str(self.data_dir), "--json"],
                             check=True, capture_output=True, text=True).stdout
        record = json.loads(out)
        return Account(record["AccountId"], record["AccessKeyId"], record["SecretAccessKey"])

    def client(self, service: str, account: Account, region: str = "us-east-1", **config: Any):
        return boto3.client(service, endpoint_url=self.endpoint, region_name=region,
                            aws_access_key_id=account.access_key_id,
                            aws_secret_access_key=account.secret_access_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config))


def wait_for_job(sagemaker, name: str, timeout_s: float = 180, until: set[str] = TERMINAL) -> dict:
    """Poll DescribeCompilationJob (as the SageMaker SDK does) until the status is one of `until`."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = sagemaker.describe_compilation_job(CompilationJobName=name)
        if job["CompilationJobStatus"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def job_request(account: Account, name: str, model_uri: str, *, output: str = "s3://kiln-tests/out/",
                data_input_config: str = '{"data": [1, 3, 32, 32]}', framework: str = "ONNX",
                target: str = "ml_c5", options: str | None = '{"kiln-backend": "onnxruntime"}',
                runtime_s: int = 600, **extra: Any) -> dict:
    """A CreateCompilationJob request; by default one backend only, so the compile is quick."""
    output_config: dict[str, Any] = {"S3OutputLocation": output, "TargetDevice": target}
    if options:
        output_config["CompilerOptions"] = options
    return {"CompilationJobName": name, "RoleArn": account.role_arn,
            "InputConfig": {"S3Uri": model_uri, "DataInputConfig": data_input_config, "Framework": framework},
            "OutputConfig": output_config, "StoppingCondition": {"MaxRuntimeInSeconds": runtime_s}, **extra}
