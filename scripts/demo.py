"""`make demo`: build a small real CNN, compile it for ml_c5 and rasp4b, run both, print both reports.

It drives Kiln exactly as a user would, through the `kiln` command line.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
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


if __name__ == "__main__":
    main()
