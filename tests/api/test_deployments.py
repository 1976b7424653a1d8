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


def _certificates(directory: Path, ca_name: str) -> list[str]:
    """A CA and one node certificate it signs (real openssl): the --tls-ca-file/--tls-cert/--tls-key triple."""
    directory.mkdir()
    ca, ca_key, cert, key, csr = (str(directory / n) for n in ("ca.pem", "ca-key.pem", "node.pem", "node-key.pem",
                                                                "node.csr"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for argv in (["req", "-x509", *ec, "-subj", f"/CN={ca_name}", "-days", "2", "-keyout", ca_key, "-out", ca],
                 ["req", *ec, "-subj", "/CN=kiln-node", "-keyout", key, "-out", csr],
                 ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
                  "-out", cert]):
        subprocess.run(["openssl", *argv], check=True, capture_output=True)
    return [ca, cert, key]


def _tls_flags(files: list[str]) -> list[str]:
    return [arg for flag, path in zip(("--tls-ca-file", "--tls-cert", "--tls-key"), files) for arg in (flag, path)]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real Dask scheduler speaking TLS only and two `kiln worker` processes configured by their own flags
    (the server's data dir), each its own OS process; yields the address and the TLS flags."""
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    tls = _tls_flags(_certificates(tmp_path / "tls", "kiln-test-ca"))
    log = open(tmp_path / "dask.log", "ab")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--protocol", "tls", "--dashboard-address", "127.0.0.1:0", *tls],
                              stdout=log, stderr=subprocess.STDOUT)]
    time.sleep(2)
    procs += [subprocess.Popen([KILN, "worker", "--scheduler", address, "--data-dir", str(tmp_path / "data"), *tls],
                               stdout=log, stderr=subprocess.STDOUT) for _ in range(2)]
    from distributed import Client
    from distributed.security import Security

    ca, cert, key = tls[1::2]
    security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
    with Client(address, timeout="60s", security=security) as client:
        client.wait_for_workers(2, timeout=90)
    yield address, tls
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_external_tls_scheduler_runs_jobs_on_both_workers(tmp_path, dask_cluster, models):
    address, tls = dask_cluster
    server = KilnServer(tmp_path / "data", ["--scheduler", address, *tls]).start()
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
    from distributed import Client
    from distributed.security import Security

    # the scheduler admits no one without a certificate its CA signed
    with pytest.raises((OSError, TimeoutError, ValueError)):
        Client(address.replace("tls://", "tcp://"), timeout="5s")
    ca, cert, key = _certificates(tmp_path / "other", "another-ca")
    with pytest.raises((OSError, TimeoutError)):
        Client(address, timeout="5s", security=Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                                                        require_encryption=True))


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
        # the local workers died with the server; the new one saw their pids gone and ran the job again at once
        assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
        log = subprocess.run([KILN, "logs", "interrupted", "--data-dir", str(server.data_dir)],
                             capture_output=True, text=True, check=True).stdout
        assert "(attempt 1)" in log and "(attempt 2)" in log
    finally:
        server.stop()


def test_job_limits_memory_and_active_jobs(tmp_path, models):
    """A job's sandbox cannot take more memory than job_memory_mb; an account cannot queue past max_active_jobs."""
    server = KilnServer(tmp_path / "data", ["--job-memory-mb", "150", "--max-active-jobs", "2"]).start()
    try:
        account = server.create_account()
        model = _upload(server, account, models)
        sm = server.client("sagemaker", account)
        for name in ("starved-1", "starved-2"):
            sm.create_compilation_job(**job_request(account, name, model, output=f"s3://kiln-tests/{name}/"))
        with pytest.raises(sm.exceptions.ResourceLimitExceeded):
            sm.create_compilation_job(**job_request(account, "one-too-many", model))
        job = wait_for_job(sm, "starved-1")
        assert job["CompilationJobStatus"] == "FAILED"
        assert "more memory than this Kiln server allows a job (150 MB" in job["FailureReason"]
        wait_for_job(sm, "starved-2")
        sm.create_compilation_job(**job_request(account, "room-again", model))  # finished jobs free the slots
        sm.stop_compilation_job(CompilationJobName="room-again")
    finally:
        server.stop()


def test_external_s3_object_store_with_kms(tmp_path, moto_endpoint, models):
    """Objects in an external S3 (moto): the artifact is written there with the job's KmsKeyId as SSE-KMS,
    and each Kiln account has its own buckets there."""
    import boto3

    objects = moto_endpoint.replace("http://", "http://testing:testing@") + "?region=us-east-1&prefix=e2e-"
    server = KilnServer(tmp_path / "data", ["--objects-url", objects]).start()
    try:
        account, other = server.create_account(), server.create_account()
        model = _upload(server, account, models)
        sm = server.client("sagemaker", account)
        key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        request = job_request(account, "on-s3", model)
        request["OutputConfig"]["KmsKeyId"] = key
        sm.create_compilation_job(**request)
        job = wait_for_job(sm, "on-s3")
        assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
        remote = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        head = remote.head_object(Bucket=f"e2e-{account.account_id}-kiln-tests", Key="out/model-ml_c5.tar.gz")
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key
        assert server.client("s3", other).list_buckets()["Buckets"] == []
    finally:
        server.stop()
