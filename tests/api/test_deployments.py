"""`kiln serve` in its other deployments: PostgreSQL store, external Dask scheduler with two `kiln worker`
processes, and a server killed with SIGKILL mid-job and restarted."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.kiln_server import KilnServer, free_port, job_request, wait_for_job
from tests.conftest import new_postgres_database

KILN = str(Path(sys.executable).with_name("kiln"))


def _upload(server: KilnServer, account, models: Path) -> str:
    s3 = server.client("s3", account)
    s3.create_bucket(Bucket="kiln-tests")
    s3.upload_file(str(models / "cnn_onnx.tar.gz"), "kiln-tests", "cnn/model.tar.gz")
    return "s3://kiln-tests/cnn/model.tar.gz"


def _workers_of(server: KilnServer, sm, names: list[str]) -> set[str]:
    """The worker process that claimed each job, from the job logs (host:pid:nonce)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    import urllib.request

    found = set()
    for name in names:
        request = AWSRequest("GET", f"{server.endpoint}/_kiln/jobs/{name}/logs")
        SigV4Auth(sm._request_signer._credentials, "sagemaker", "us-east-1").add_auth(request)
        with urllib.request.urlopen(urllib.request.Request(request.url, headers=dict(request.headers))) as r:
            match = re.search(r"claimed by worker (\S+):\S+ ", r.read().decode())
        assert match, name
        found.add(match.group(1))
    return found


def test_postgresql_store_survives_a_restart(tmp_path, postgres_server, models):
    server = KilnServer(tmp_path / "data", ["--store-url", new_postgres_database(postgres_server)]).start()
    try:
        account = server.create_account()
        model = _upload(server, account, models)
        sm = server.client("sagemaker", account)
        sm.create_compilation_job(**job_request(account, "on-postgres", model, Tags=[{"Key": "db", "Value": "pg"}]))
        assert wait_for_job(sm, "on-postgres")["CompilationJobStatus"] == "COMPLETED"
        assert not (tmp_path / "data" / "kiln.db").exists()  # the store really is PostgreSQL
    finally:
        server.stop()
    server.start()
    try:
        job = sm.describe_compilation_job(CompilationJobName="on-postgres")
        assert job["CompilationJobStatus"] == "COMPLETED"
        assert sm.list_tags(ResourceArn=job["CompilationJobArn"])["Tags"] == [{"Key": "db", "Value": "pg"}]
    finally:
        server.stop()


@pytest.fixture
def dask_cluster(tmp_path):
    """A real Dask scheduler and two `kiln worker` processes, each its own OS process."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "ab")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
                              stdout=log, stderr=subprocess.STDOUT)]
    time.sleep(2)
    procs += [subprocess.Popen([KILN, "worker", "--scheduler", address], stdout=log, stderr=subprocess.STDOUT)
              for _ in range(2)]
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=90)
    yield address
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_external_scheduler_runs_jobs_on_both_workers(tmp_path, dask_cluster, models):
    server = KilnServer(tmp_path / "data", ["--scheduler", dask_cluster]).start()
    try:
        account = server.create_account()
        model = _upload(server, account, models)
        sm = server.client("sagemaker", account)
        names = ["remote-a", "remote-b"]
        for name in names:
            sm.create_compilation_job(**job_request(account, name, model, output=f"s3://kiln-tests/{name}/"))
        for name in names:
            job = wait_for_job(sm, name)
            assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
        # each worker thread takes one job at a time, so two queued jobs ran in two worker processes
        pids = {w.split(":")[1] for w in _workers_of(server, sm, names)}
        assert len(pids) == 2
    finally:
        server.stop()


def test_server_killed_mid_job_recovers_it(tmp_path, models):
    server = KilnServer(tmp_path / "data").start()
    account = server.create_account()
    model = _upload(server, account, models)
    sm = server.client("sagemaker", account)
    sm.create_compilation_job(**job_request(account, "interrupted", model, options=None))
    assert wait_for_job(sm, "interrupted", until={"INPROGRESS"}, timeout_s=60)["CompilationJobStatus"] == "INPROGRESS"
    server.kill9()
    server.start()
    try:
        job = wait_for_job(sm, "interrupted", timeout_s=240)
        assert job["CompilationJobStatus"] in ("COMPLETED", "FAILED")
        if job["CompilationJobStatus"] == "FAILED":
            assert "stopped responding" in job["FailureReason"]
    finally:
        server.stop()
