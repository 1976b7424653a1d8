"""Devices, profile jobs and inference jobs end to end: a real `kiln serve`, a real `kiln agent` on this host
and another, installed from the modelkiln-runtime wheel alone, in the arm64 CPython under qemu-user; boto3
calling Kiln's own service model; `kiln profile`, `kiln infer`, `kiln devices`; the console's device pages."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modelkiln.devices.validation import DATA_PATH
from modelkiln.runtime import Model
from tests.api.kiln_server import KILN, Account, KilnServer
from tests.conftest import compile_cnn
from tests.console.test_console import browser  # noqa: F401 - the headless Chromium fixture

LEASE_S = 6  # the server's device lease here: a killed agent's job fails within seconds
CROSS = Path(sys.executable).parents[1] / "share" / "kiln" / "cross" / "aarch64-root"


@pytest.fixture(scope="module")
def kiln(tmp_path_factory):
    data = tmp_path_factory.mktemp("kiln-devices")
    (data / "kiln.toml").write_text(f"device_lease_s = {LEASE_S}\nworkers = 1\n")
    server = KilnServer(data)
    owner, other = server.create_account(), server.create_account()
    server.start()
    server.client("s3", owner).create_bucket(Bucket="dev")  # the owner's models, inputs and outputs
    yield server, owner, other
    server.stop()


@pytest.fixture(scope="module")
def artifacts(models, tmp_path_factory, kiln):
    """The small CNN compiled for ml_c5 (onnxruntime, openvino) and rasp4b (onnxruntime), in the owner's bucket."""
    server, owner, _ = kiln
    s3 = server.client("s3", owner)
    uris = {}
    for key, target, backend in (("x86-ort", "ml_c5", "onnxruntime"), ("x86-ov", "ml_c5", "openvino"),
                                 ("arm-ort", "rasp4b", "onnxruntime")):
        out = tmp_path_factory.mktemp(key)
        compile_cnn(models, out, target_device=target, compiler_options=json.dumps({"kiln-backend": backend}))
        s3.upload_file(str(out / "model.tar.gz"), "dev", f"{key}.tar.gz")
        uris[key] = (f"s3://dev/{key}.tar.gz", out / "model.tar.gz")
    return uris


@pytest.fixture(scope="module")
def device_site(runtime_wheel, tmp_path_factory) -> Path:
    """The modelkiln-runtime wheel installed for the arm64 Python: the runtime and the agent, nothing else of Kiln."""
    site = tmp_path_factory.mktemp("arm64-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(site), str(runtime_wheel)], check=True, timeout=300)
    assert not (site / "modelkiln" / "compiler").exists() and not (site / "modelkiln" / "__init__.py").exists()
    return site


def agent_command(name: str, device_type: str, site: Path | None) -> tuple[list[str], dict[str, str]]:
    """This host's `kiln agent`, or (with the wheel's site) the installed one in the arm64 Python under qemu."""
    if site is None:
        return [KILN, "agent", "--device-name", name, "--device-type", device_type, "--wait-s", "2"], {}
    python = CROSS / "usr" / "bin" / "python3.11"
    return (["qemu-aarch64-static", "-L", str(CROSS), str(python), "-m", "modelkiln.agent.cli", "agent",
             "--device-name", name, "--device-type", device_type, "--wait-s", "2"],
            {"PYTHONPATH": f"{site}:{CROSS / 'site'}", "PYTHONNOUSERSITE": "1"})


class Agent:
    def __init__(self, server: KilnServer, account: Account, name: str, device_type: str, log: Path,
                 site: Path | None = None) -> None:
        cmd, extra = agent_command(name, device_type, site)
        self.name, self.log = name, log
        self.proc = subprocess.Popen(cmd, env={**account.env(server.endpoint), **extra},
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while b"waiting for jobs" not in log.read_bytes():
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    def children(self) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def agents(kiln, device_site, tmp_path_factory):
    server, owner, _ = kiln
    logs = tmp_path_factory.mktemp("agents")
    x86 = Agent(server, owner, "bench-x86", "ml_c5", logs / "x86.log")
    arm = Agent(server, owner, "pi-emulated", "rasp4b", logs / "arm.log", site=device_site)
    yield {"x86": x86, "arm": arm}
    x86.stop()
    arm.stop()


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie waits for an init that may never reap it in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kiln_client(server: KilnServer, account: Account, monkeypatch):
    """boto3 for Kiln's own operations (a new session reads AWS_DATA_PATH, where Kiln's service model lies);
    boto3's own parameter checks are off, so the server's are what is tested."""
    import boto3
    from botocore.config import Config
    monkeypatch.setenv("AWS_DATA_PATH", str(DATA_PATH))
    return boto3.Session().client("kiln", endpoint_url=server.endpoint, region_name="us-east-1",
                                  aws_access_key_id=account.access_key_id,
                                  aws_secret_access_key=account.secret_access_key,
                                  config=Config(retries={"max_attempts": 1}, parameter_validation=False))


def cli(server: KilnServer, account: Account, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KILN, *args, "--endpoint", server.endpoint], env=account.env(server.endpoint),
                          capture_output=True, text=True, timeout=300)


def test_devices_are_listed_with_their_facts_and_only_to_their_account(kiln, agents, monkeypatch):
    server, owner, other = kiln
    devices = {d["DeviceName"]: d for d in kiln_client(server, owner, monkeypatch).list_devices()["Devices"]}
    assert set(devices) == {"bench-x86", "pi-emulated"}
    x86, arm = devices["bench-x86"], devices["pi-emulated"]
    assert x86["Status"] == arm["Status"] == "ONLINE"
    assert x86["Facts"]["Arch"] == "x86_64" and x86["Facts"]["Emulated"] is False
    assert arm["Facts"]["Arch"] == "aarch64" and arm["Facts"]["Emulated"] is True
    assert "qemu-user" in arm["Facts"]["EmulatedBy"]
    assert "onnxruntime" in arm["Facts"]["Runtimes"] and "numpy" in x86["Facts"]["Runtimes"]
    assert arm["DeviceType"] == "rasp4b"
    text = cli(server, owner, "devices")
    assert text.returncode == 0 and "pi-emulated" in text.stdout and "(emulated)" in text.stdout, text.stderr
    assert kiln_client(server, other, monkeypatch).list_devices()["Devices"] == []


@pytest.mark.parametrize("device,artifact,backend", [("bench-x86", "x86-ort", "onnxruntime"),
                                                     ("bench-x86", "x86-ov", "openvino"),
                                                     ("pi-emulated", "arm-ort", "onnxruntime")])
def test_profile_job_measures_the_artifact_on_the_device(kiln, agents, artifacts, device, artifact, backend):
    server, owner, _ = kiln
    done = cli(server, owner, "profile", "--model", artifacts[artifact][0], "--device", device, "--runs", "30",
               "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert job["Status"] == "COMPLETED" and job["Kind"] == "PROFILE"
    profile = job["Profile"]
    assert profile["Backend"] == backend and profile["Runs"] == 30
    lat = profile["Latency"]
    assert 0 < lat["MinMs"] <= lat["P50Ms"] <= lat["P90Ms"] <= lat["P99Ms"] <= lat["MaxMs"]
    assert profile["ColdLoadMs"] > profile["WarmLoadMs"] > 0  # the cold load imports the backend
    assert profile["PeakMemoryBytes"] > 20 * 2**20
    assert profile["Emulated"] is (device == "pi-emulated")
    layers = profile["Layers"]
    assert layers and all(x["Ms"] >= 0 for x in layers) and layers[0]["Ms"] == max(x["Ms"] for x in layers)
    assert abs(sum(x["Share"] for x in layers) - 1) < 0.01
    assert any("Conv" in x["OpType"] for x in layers), layers


@pytest.mark.parametrize("device,artifact", [("bench-x86", "x86-ort"), ("pi-emulated", "arm-ort")])
def test_inference_job_returns_the_artifacts_outputs(kiln, agents, artifacts, tmp_path, device, artifact):
    server, owner, _ = kiln
    s3 = server.client("s3", owner)
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", data=x)
    s3.upload_file(str(tmp_path / "in.npz"), "dev", f"in-{device}.npz")
    done = cli(server, owner, "infer", "--model", artifacts[artifact][0], "--device", device,
               "--inputs", f"s3://dev/in-{device}.npz", "--outputs", f"s3://dev/out-{device}.npz", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert job["Inference"]["Outputs"][0]["Name"] == "prob" and job["Inference"]["Emulated"] is (device == "pi-emulated")
    s3.download_file("dev", f"out-{device}.npz", str(tmp_path / "out.npz"))
    got = np.load(tmp_path / "out.npz")["prob"]
    expected = Model(artifacts["x86-ort"][1]).run(x)[0]  # the same model compiled for this host
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_bad_requests_name_the_field_and_other_accounts_see_nothing(kiln, agents, artifacts, monkeypatch):
    from botocore.exceptions import ClientError
    server, owner, other = kiln
    mine, theirs = kiln_client(server, owner, monkeypatch), kiln_client(server, other, monkeypatch)
    model = artifacts["x86-ort"][0]
    cases = [(mine, {"JobName": "bad-runs", "DeviceName": "bench-x86", "ModelS3Uri": model, "Runs": 0},
              "ValidationException", "Runs"),
             (mine, {"JobName": "no-model", "DeviceName": "bench-x86", "ModelS3Uri": "s3://dev/missing.tar.gz"},
              "ValidationException", "ModelS3Uri"),
             (mine, {"JobName": "no-device", "DeviceName": "nowhere", "ModelS3Uri": model},
              "ResourceNotFound", "nowhere"),
             (theirs, {"JobName": "not-yours", "DeviceName": "bench-x86", "ModelS3Uri": model},
              "ValidationException", "ModelS3Uri")]  # their model is not readable to the other account
    for client, request, code, named in cases:
        with pytest.raises(ClientError) as info:
            client.create_profile_job(**request)
        assert info.value.response["Error"]["Code"] == code and named in info.value.response["Error"]["Message"]
    mine.create_profile_job(JobName="mine-only", DeviceName="bench-x86", ModelS3Uri=model, Runs=1)
    with pytest.raises(ClientError) as info:
        theirs.describe_device_job(JobName="mine-only")
    assert info.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as info:  # another account's agent cannot take or report this device's work
        theirs.poll_device_work(DeviceName="bench-x86", WaitSeconds=0)
    assert info.value.response["Error"]["Code"] == "ResourceNotFound"


def start_long_profile(client, agent: Agent, job: str, model: str) -> None:
    """A profile job of 10,000 runs on agent's device, returned once its child process runs it."""
    client.create_profile_job(JobName=job, DeviceName=agent.name, ModelS3Uri=model, Runs=10000)
    deadline = time.monotonic() + 60
    while not agent.children() or client.describe_device_job(JobName=job)["Status"] != "RUNNING":
        assert time.monotonic() < deadline, agent.log.read_text()
        time.sleep(0.2)


def test_a_killed_agent_fails_its_job_with_the_reason_and_leaves_no_process(kiln, artifacts, tmp_path, monkeypatch):
    server, owner, _ = kiln
    client = kiln_client(server, owner, monkeypatch)
    victim = Agent(server, owner, "victim", "ml_c5", tmp_path / "victim.log")
    try:
        start_long_profile(client, victim, "killed-mid-job", artifacts["x86-ov"][0])
        children = victim.children()
        os.kill(victim.proc.pid, signal.SIGKILL)  # the agent alone: its child must die with it
        victim.proc.wait()
        time.sleep(1)
        assert not [pid for pid in children if alive(pid)], "the job's process outlived its agent"
        deadline = time.monotonic() + LEASE_S + 10
        while (job := client.describe_device_job(JobName="killed-mid-job"))["Status"] == "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert job["Status"] == "FAILED"
        assert "device victim stopped reporting" in job["FailureReason"] and "detected at" in job["FailureReason"]
    finally:
        victim.stop()


def test_a_stopped_agent_reports_its_job_failed_at_once(kiln, artifacts, tmp_path, monkeypatch):
    server, owner, _ = kiln
    client = kiln_client(server, owner, monkeypatch)
    agent = Agent(server, owner, "stopping", "ml_c5", tmp_path / "stopping.log")
    try:
        start_long_profile(client, agent, "agent-stopped", artifacts["x86-ov"][0])
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(30) != 0
        job = client.describe_device_job(JobName="agent-stopped")
        assert job["Status"] == "FAILED" and "was stopped while running the job" in job["FailureReason"]
    finally:
        agent.stop()


def test_a_job_no_agent_claims_fails_at_its_deadline(kiln, artifacts, monkeypatch):
    server, owner, _ = kiln
    client = kiln_client(server, owner, monkeypatch)
    client.register_device(DeviceName="switched-off", Facts={"Arch": "aarch64"})
    client.create_profile_job(JobName="never-claimed", DeviceName="switched-off",
                              ModelS3Uri=artifacts["x86-ort"][0], MaxPendingSeconds=10)
    time.sleep(11)
    job = client.describe_device_job(JobName="never-claimed")
    assert job["Status"] == "FAILED" and "did not ask for work within 10 s" in job["FailureReason"]
    assert "kiln agent --device-name switched-off" in job["FailureReason"]


def test_the_console_shows_devices_and_a_profile_with_its_charts_to_their_account_only(
        kiln, agents, artifacts, browser, tmp_path):
    from playwright.sync_api import expect

    from tests.console.test_console import Site, shot, signed_in
    server, owner, other = kiln
    done = cli(server, owner, "profile", "--model", artifacts["x86-ort"][0], "--device", "bench-x86", "--runs", "20",
               "--name", "console-profile")
    assert done.returncode == 0, done.stdout + done.stderr
    site = Site(server, owner, other, tmp_path)
    context, page = signed_in(browser, site, owner)
    page.click("header nav a:has-text('Devices')")
    expect(page.locator("tr[data-device=pi-emulated]")).to_contain_text("(emulated)")
    expect(page.locator("tr[data-device=bench-x86]")).to_contain_text("ONLINE")
    shot(page, site, "devices")
    page.click("a:has-text('console-profile')")
    expect(page.locator("#job-status")).to_have_text("COMPLETED")
    assert page.locator("#latency-chart rect").count() == 5  # min, p50, p90, p99, max
    assert page.locator("#layer-chart rect").count() >= 2
    expect(page.locator("#profile")).to_contain_text("Cold load")
    shot(page, site, "profile")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    for path in ("/console/devices", "/console/device-jobs/console-profile"):
        page.goto(site.url(path))
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than a phone's screen"
    shot(page, site, "profile-phone")
    context.close()
    context, page = signed_in(browser, site, other)
    page.goto(site.url("/console/devices"))
    expect(page.locator("#no-devices")).to_be_visible()
    response = page.goto(site.url("/console/device-jobs/console-profile"))
    assert response is not None and response.status == 404
    context.close()


def test_kiln_profile_on_ships_the_candidate_the_device_timed_fastest(kiln, agents, artifacts, models, monkeypatch,
                                                                      tmp_path):
    import tarfile

    from tests.api.kiln_server import job_request, wait_for_job
    server, owner, _ = kiln
    s3, sagemaker = server.client("s3", owner), server.client("sagemaker", owner)
    s3.upload_file(str(models / "cnn_onnx.tar.gz"), "dev", "src/cnn.tar.gz")
    with pytest.raises(sagemaker.exceptions.ClientError) as info:
        sagemaker.create_compilation_job(**job_request(owner, "on-nowhere", "s3://dev/src/cnn.tar.gz",
                                                       output="s3://dev/out/", options='{"kiln-profile-on": "nowhere"}'))
    assert "kiln-profile-on" in info.value.response["Error"]["Message"]
    sagemaker.create_compilation_job(**job_request(owner, "on-device", "s3://dev/src/cnn.tar.gz",
                                                   output="s3://dev/out/", options='{"kiln-profile-on": "bench-x86"}'))
    job = wait_for_job(sagemaker, "on-device", timeout_s=300)
    assert job["CompilationJobStatus"] == "COMPLETED", job.get("FailureReason")
    s3.download_file("dev", "out/cnn-ml_c5.tar.gz", str(tmp_path / "model.tar.gz"))
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        report = json.load(tar.extractfile("report.json"))
    profiles = report["device_profiles"]
    assert len(profiles) >= 2 and {p["device"] for p in profiles} == {"bench-x86"}
    timed = {p["candidate"]: p["p50_ms"] for p in profiles if p["p50_ms"] is not None}
    assert report["selected"] == min(timed, key=timed.get)
    assert report["selection"].startswith("fastest median latency on device bench-x86")
    assert [c["name"] for c in report["candidates"] if c["status"] == "selected"] == [report["selected"]]
    listed = kiln_client(server, owner, monkeypatch).list_device_jobs(DeviceName="bench-x86")["DeviceJobs"]
    assert {p["profile_job"] for p in profiles} <= {j["JobName"] for j in listed}
    assert Model(tmp_path / "model.tar.gz").backend in report["selected"]


def test_kiln_compile_refuses_kiln_profile_on_naming_the_field(models, tmp_path):
    from modelkiln.errors import ValidationError
    with pytest.raises(ValidationError) as info:
        compile_cnn(models, tmp_path, target_device="ml_c5", compiler_options='{"kiln-profile-on": "lab-pi-1"}')
    assert info.value.field.endswith("kiln-profile-on") and "kiln profile" in info.value.message
    with pytest.raises(ValidationError) as info:
        compile_cnn(models, tmp_path, target_device="ml_c5", compiler_options='{"kiln-profile-on": "no spaces"}')
    assert info.value.field.endswith("kiln-profile-on")


def test_an_agent_started_before_its_server_waits_for_it_and_registers(tmp_path):
    server = KilnServer(tmp_path / "late-server")
    account = server.create_account()  # keys are written offline: the server is not running yet
    log = tmp_path / "early-agent.log"
    proc = subprocess.Popen([KILN, "agent", "--device-name", "early", "--wait-s", "1"],
                            env=account.env(server.endpoint), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        time.sleep(3)
        assert proc.poll() is None and b"trying again" in log.read_bytes(), log.read_text()
        server.start()
        deadline = time.monotonic() + 60
        while b"waiting for jobs" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        server.stop()


@pytest.fixture(scope="module")
def compiled_by_kiln(kiln, models):
    """The small CNN's TorchScript compiled by the server's compile jobs for each agent's target: artifact URIs."""
    from tests.api.kiln_server import job_request, wait_for_job
    server, owner, _ = kiln
    s3, sagemaker = server.client("s3", owner), server.client("sagemaker", owner)
    s3.upload_file(str(models / "cnn_pth.tar.gz"), "dev", "src/cnn_pth.tar.gz")
    for name, target in (("pth-x86", "ml_c5"), ("pth-pi", "rasp4b")):
        sagemaker.create_compilation_job(**job_request(owner, name, "s3://dev/src/cnn_pth.tar.gz", framework="PYTORCH",
                                                       data_input_config='{"input0": [1, 3, 32, 32]}',
                                                       output=f"s3://dev/{name}/", target=target))
    uris = {}
    for name in ("pth-x86", "pth-pi"):
        job = wait_for_job(sagemaker, name, timeout_s=300)
        assert job["CompilationJobStatus"] == "COMPLETED", job.get("FailureReason")
        uris[name] = job["ModelArtifacts"]["S3ModelArtifacts"]
    return uris


@pytest.mark.parametrize("device,compiled", [("bench-x86", "pth-x86"), ("pi-emulated", "pth-pi")])
def test_inference_on_a_compiled_artifact_is_compared_with_the_source_framework(kiln, agents, compiled_by_kiln, models,
                                                                                tmp_path, device, compiled):
    import torch
    server, owner, _ = kiln
    s3 = server.client("s3", owner)
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input0=x)
    s3.upload_file(str(tmp_path / "in.npz"), "dev", f"cmp-in-{device}.npz")
    done = cli(server, owner, "infer", "--model", compiled_by_kiln[compiled], "--device", device,
               "--inputs", f"s3://dev/cmp-in-{device}.npz", "--outputs", f"s3://dev/cmp-out-{device}.npz", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert job["Status"] == "COMPLETED" and job["CompilationJobName"] == compiled
    comparison = job["Comparison"]
    assert comparison["Status"] == "MATCHED", comparison
    assert comparison["CompilationJobName"] == compiled and comparison["MaxRelErr"] < 1e-3
    assert comparison["Reference"].startswith("PYTORCH (the server's torch 2.13.0") and "float32" in comparison["Rule"]
    # what the server compared is what the device wrote, and it is what torch computes
    s3.download_file("dev", f"cmp-out-{device}.npz", str(tmp_path / "out.npz"))
    with np.load(tmp_path / "out.npz") as out:
        got = out[out.files[0]]
    expected = torch.jit.load(str(models / "cnn.pth"))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    text = cli(server, owner, "infer", "--model", compiled_by_kiln[compiled], "--device", device,
               "--inputs", f"s3://dev/cmp-in-{device}.npz", "--outputs", f"s3://dev/cmp-out2-{device}.npz")
    assert text.returncode == 0 and f"against the source model (compilation job {compiled}): MATCHED" in text.stdout


def fake_device_run(client, s3, tmp_path: Path, device: str, outputs: dict[str, np.ndarray]) -> None:
    """Take the device's next job as its agent would, and report `outputs` as what the artifact computed."""
    work = client.poll_device_work(DeviceName=device, WaitSeconds=10)["Work"]
    np.savez(tmp_path / "lie.npz", **outputs)
    bucket, key = work["OutputS3Uri"][len("s3://"):].split("/", 1)
    s3.upload_file(str(tmp_path / "lie.npz"), bucket, key)
    client.report_device_work(DeviceName=device, JobName=work["JobName"], Status="COMPLETED", Inference={
        "Backend": "onnxruntime", "OutputS3Uri": work["OutputS3Uri"], "RunMs": 1.0, "Emulated": False,
        "Outputs": [{"Name": n, "Shape": list(a.shape), "Dtype": str(a.dtype)} for n, a in outputs.items()]})


def wait_compared(client, name: str) -> dict:
    deadline = time.monotonic() + 300
    while (job := client.describe_device_job(JobName=name))["Status"] not in ("COMPLETED", "FAILED"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    return job


def test_wrong_device_outputs_are_caught_and_a_replaced_artifact_is_not_compared(kiln, compiled_by_kiln, tmp_path,
                                                                                 monkeypatch, browser):
    from playwright.sync_api import expect

    from tests.console.test_console import Site, signed_in
    server, owner, _ = kiln
    s3, client = server.client("s3", owner), kiln_client(server, owner, monkeypatch)
    client.register_device(DeviceName="liar", DeviceType="ml_c5", Facts={"Arch": "x86_64"})
    try:
        x = np.random.default_rng(6).standard_normal((1, 3, 32, 32)).astype(np.float32)
        np.savez(tmp_path / "in.npz", input0=x)
        s3.upload_file(str(tmp_path / "in.npz"), "dev", "liar-in.npz")
        model = compiled_by_kiln["pth-x86"]
        request = {"DeviceName": "liar", "ModelS3Uri": model, "InputS3Uri": "s3://dev/liar-in.npz"}
        client.create_inference_job(JobName="lie", OutputS3Uri="s3://dev/liar-out.npz", **request)
        fake_device_run(client, s3, tmp_path, "liar", {"output0": np.full((1, 10), 0.1, np.float32)})
        job = wait_compared(client, "lie")
        assert job["Status"] == "COMPLETED" and job["Comparison"]["Status"] == "MISMATCHED", job
        assert job["Comparison"]["MaxRelErr"] > 1e-3 and "max rel err" in job["Comparison"]["Detail"]
        context, page = signed_in(browser, Site(server, owner, kiln[2], tmp_path), owner)
        page.goto(f"{server.endpoint}/console/device-jobs/lie")
        expect(page.locator("#comparison")).to_contain_text("MISMATCHED")
        expect(page.locator("#comparison")).to_contain_text("pth-x86")
        context.close()
        # the artifact at the URI replaced after the compile: the source is unknown, so nothing is claimed
        bucket, key = model[len("s3://"):].split("/", 1)
        s3.download_file(bucket, key, str(tmp_path / "original.tar.gz"))
        client.create_inference_job(JobName="replaced", OutputS3Uri="s3://dev/replaced-out.npz", **request)
        s3.put_object(Bucket=bucket, Key=key, Body=b"not the compile's artifact")
        try:
            fake_device_run(client, s3, tmp_path, "liar", {"output0": np.zeros((1, 10), np.float32)})
            job = wait_compared(client, "replaced")
        finally:
            s3.upload_file(str(tmp_path / "original.tar.gz"), bucket, key)
        assert job["Comparison"]["Status"] == "NOT_COMPARED" and "SHA-256 differs" in job["Comparison"]["Detail"]
        # an artifact no compile job of the account wrote: outputs only, no comparison
        client.create_inference_job(JobName="foreign", DeviceName="liar", ModelS3Uri="s3://dev/src/cnn_pth.tar.gz",
                                    InputS3Uri="s3://dev/liar-in.npz", OutputS3Uri="s3://dev/foreign-out.npz")
        fake_device_run(client, s3, tmp_path, "liar", {"output0": np.zeros((1, 10), np.float32)})
        job = client.describe_device_job(JobName="foreign")
        assert job["Status"] == "COMPLETED" and "Comparison" not in job and "CompilationJobName" not in job
    finally:
        client.deregister_device(DeviceName="liar")


def fake_device_profiles(client, device: str, p50_ms: dict[str, float | None]) -> list[str]:
    """Answer the device's profile jobs as its agent would: candidate key -> median latency (None: it failed)."""
    answered, deadline = [], time.monotonic() + 300  # a compile that fails asks for fewer: fail, do not hang
    while len(answered) < len(p50_ms):
        assert time.monotonic() < deadline, f"the device was asked to profile {answered} only, not all of {p50_ms}"
        work = client.poll_device_work(DeviceName=device, WaitSeconds=10).get("Work")
        if work is None:
            continue
        assert work["Kind"] == "PROFILE"
        key = work["ModelS3Uri"].rsplit("/", 1)[1].removesuffix(".tar.gz")
        answered.append(key)
        if p50_ms[key] is None:
            client.report_device_work(DeviceName=device, JobName=work["JobName"], Status="FAILED",
                                      FailureReason=f"ClientError: {key} is not installed on this device")
            continue
        client.report_device_work(DeviceName=device, JobName=work["JobName"], Status="COMPLETED", Profile={
            "Backend": key, "Precision": "float32", "ColdLoadMs": 50.0, "WarmLoadMs": 5.0, "Runs": 100,
            "Latency": {"P50Ms": p50_ms[key], "P90Ms": p50_ms[key], "P99Ms": p50_ms[key], "MeanMs": p50_ms[key],
                        "MinMs": p50_ms[key], "MaxMs": p50_ms[key]},
            "PeakMemoryBytes": 1 << 20, "Layers": [], "LayerSource": "none", "Emulated": False, "Notes": []})
    return answered


def test_a_registered_device_of_the_target_type_chooses_the_backend_unasked(kiln, models, tmp_path, monkeypatch):
    """rasp4b's backend order is extrapolated from x86 unless a real rasp4b of the account's is ONLINE: then its
    timings choose. (The test answers as that device: this host has no real aarch64 board, and the emulated agent's
    timings, being qemu's, are never used unasked.)"""
    import tarfile

    from tests.api.kiln_server import job_request, wait_for_job
    server, owner, _ = kiln
    s3, sagemaker = server.client("s3", owner), server.client("sagemaker", owner)
    client = kiln_client(server, owner, monkeypatch)
    s3.upload_file(str(models / "cnn_onnx.tar.gz"), "dev", "src/cnn.tar.gz")
    client.register_device(DeviceName="pi-real", DeviceType="rasp4b", Facts={"Arch": "aarch64", "Emulated": False})

    def compile_and_answer(name: str, p50_ms: dict[str, float | None]) -> dict:
        sagemaker.create_compilation_job(**job_request(owner, name, "s3://dev/src/cnn.tar.gz", target="rasp4b",
                                                       output=f"s3://dev/{name}/", options=None))
        assert sorted(fake_device_profiles(client, "pi-real", p50_ms)) == sorted(p50_ms)
        job = wait_for_job(sagemaker, name, timeout_s=300)
        assert job["CompilationJobStatus"] == "COMPLETED", job.get("FailureReason")
        s3.download_file("dev", f"{name}/cnn-rasp4b.tar.gz", str(tmp_path / f"{name}.tar.gz"))
        with tarfile.open(tmp_path / f"{name}.tar.gz") as tar:
            return json.load(tar.extractfile("report.json"))

    try:
        report = compile_and_answer("auto-timed", {"onnxruntime": 9.0, "openvino": 2.0, "iree": 5.0})
        assert report["selected"] == "openvino" and "on device pi-real" in report["selection"]
        assert "chosen unasked" in report["selection"]
        assert {p["candidate"]: p["p50_ms"] for p in report["device_profiles"]}["iree"] == 5.0
        # the device times nothing: the compile still ships, by the catalog's order, saying why
        report = compile_and_answer("auto-untimed", {"onnxruntime": None, "openvino": None, "iree": None})
        assert report["selected"] == "onnxruntime" and "catalog's order" in report["selection"]
        assert any("device pi-real was asked to time the candidates but did not" in n for n in report["notes"])
    finally:
        client.deregister_device(DeviceName="pi-real")
