"""`make demo`: build a small real CNN, compile it for ml_c5 and rasp4b, run both, print both reports;
then the same as a service: start `kiln serve`, upload the model with boto3, create a compilation job through
the SageMaker API, wait, download the artifact, run it, stop the server.

It drives Kiln exactly as a user would, through the `kiln` command line and unmodified boto3.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path("demo-out")
KILN = [str(Path(sys.executable).with_name("kiln"))]


def build_model(folder: Path) -> Path:
    """A MobileNet-style CNN with random weights, saved as TorchScript in model.tar.gz (Neo's format)."""
    torch.manual_seed(0)

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(),
        )

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        block(16, 32, 1), block(32, 64, 2), block(64, 64, 1), block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10), nn.Softmax(dim=1),
    ).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.trace(model, torch.randn(1, 3, 96, 96)).save(str(folder / "model.pth"))
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "model.pth", arcname="model.pth")
    return archive


def step(title: str, *args: str) -> None:
    print(f"\n$ kiln {' '.join(args)}", flush=True)
    if subprocess.run([*KILN, *args]).returncode != 0:
        sys.exit(f"demo failed at: {title}")


def serve_demo(archive: Path, image: Path) -> None:
    """The service half: kiln serve on loopback, driven by boto3 as any SageMaker user would."""
    import boto3

    from modelkiln.runtime import Model

    data = OUT / "server"
    shutil.rmtree(data, ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    creds = json.loads(subprocess.run([*KILN, "accounts", "create", "--data-dir", str(data), "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    print(f"\n$ kiln serve --data-dir {data} --port {port}", flush=True)
    server = subprocess.Popen([*KILN, "serve", "--data-dir", str(data), "--port", str(port)])
    try:
        _wait_healthy(endpoint, server)
        print(f"web console: {endpoint}/console/ (sign in with access key {creds['AccessKeyId']} and its secret)")
        clients = {name: boto3.client(name, endpoint_url=endpoint, region_name="us-east-1",
                                      aws_access_key_id=creds["AccessKeyId"],
                                      aws_secret_access_key=creds["SecretAccessKey"]) for name in ("s3", "sagemaker")}
        s3, sm = clients["s3"], clients["sagemaker"]
        s3.create_bucket(Bucket="demo-models")
        s3.upload_file(str(archive), "demo-models", "cnn/model.tar.gz")
        print("boto3: uploaded s3://demo-models/cnn/model.tar.gz; CreateCompilationJob demo-cnn for ml_c5")
        sm.create_compilation_job(
            CompilationJobName="demo-cnn", RoleArn=f"arn:aws:iam::{creds['AccountId']}:role/demo",
            InputConfig={"S3Uri": "s3://demo-models/cnn/model.tar.gz", "Framework": "PYTORCH",
                         "DataInputConfig": '{"input0": [1, 3, 96, 96]}'},
            OutputConfig={"S3OutputLocation": "s3://demo-models/compiled/", "TargetDevice": "ml_c5"},
            StoppingCondition={"MaxRuntimeInSeconds": 900})
        while (job := sm.describe_compilation_job(CompilationJobName="demo-cnn"))["CompilationJobStatus"] in (
                "STARTING", "INPROGRESS"):
            time.sleep(1)
        print(f"DescribeCompilationJob: {job['CompilationJobStatus']} {job['FailureReason']}")
        if job["CompilationJobStatus"] != "COMPLETED":
            sys.exit("demo failed: the service's compilation job did not complete")
        uri = job["ModelArtifacts"]["S3ModelArtifacts"]
        local = OUT / "server-artifact.tar.gz"
        s3.download_file(uri.split("/")[2], uri.split("/", 3)[3], str(local))
        probabilities = Model(local).run(np.load(image))[0]
        print(f"downloaded {uri} (sha256 {job['ModelDigests']['ArtifactDigest'][:16]}...), ran it: "
              f"class {int(probabilities.argmax())} with p={float(probabilities.max()):.3f}")
    finally:
        server.terminate()
        server.wait(30)
        print("kiln serve stopped")


def _wait_healthy(endpoint: str, server: subprocess.Popen) -> None:
    for _ in range(180):
        if server.poll() is not None:
            sys.exit("demo failed: kiln serve exited")
        try:
            with urllib.request.urlopen(f"{endpoint}/_kiln/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("demo failed: kiln serve did not start")


def main() -> None:
    archive = build_model(OUT / "source")
    np.save(OUT / "image.npy", np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32))
    common = ["--model", str(archive), "--framework", "PYTORCH", "--input-config", '{"input0": [1, 3, 96, 96]}']
    step("compile for ml_c5", "compile", *common, "--target-device", "ml_c5", "--output", str(OUT / "ml_c5"))
    step("compile for rasp4b", "compile", *common, "--target-device", "rasp4b", "--output", str(OUT / "rasp4b"))
    step("run the ml_c5 artifact", "run", str(OUT / "ml_c5" / "model.tar.gz"), "--input", str(OUT / "image.npy"))
    step("run the rasp4b artifact under qemu-user", "run", str(OUT / "rasp4b" / "model.tar.gz"),
         "--input", str(OUT / "image.npy"), "--emulate")
    print(f"\nArtifacts and report.json files are in {OUT}/ml_c5 and {OUT}/rasp4b.")
    serve_demo(archive, OUT / "image.npy")


if __name__ == "__main__":
    main()
