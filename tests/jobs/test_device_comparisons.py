"""The device store's side of an inference job's comparison, on SQLite and PostgreSQL: an inference job whose
artifact a compile wrote waits for a server worker as COMPARING; one worker takes it, holds it by a lease, and
completes it; a lapsed comparison completes the job uncompared, saying why. (End to end: tests/agent.)"""
from __future__ import annotations

from modelkiln.devices.model import COMPARING, COMPLETED, INFERENCE, MATCHED, NOT_COMPARED, Comparison, DeviceJob
from modelkiln.devices.store import COMPARE_QUEUE_S, DeviceStore

T0 = 1_800_000_000.0
ACCOUNT = "111122223333"


def inference_job(store: DeviceStore, name: str, compiled: str | None) -> DeviceJob:
    store.register(ACCOUNT, "us-east-1", "pi", "rasp4b", {"Arch": "aarch64"}, now=T0)
    request = {"ModelS3Uri": "s3://b/m.tar.gz", "InputS3Uri": "s3://b/in.npz", "OutputS3Uri": "s3://b/out.npz"}
    if compiled:
        request["CompilationJobName"] = compiled
    store.create_job(DeviceJob(ACCOUNT, name, "us-east-1", INFERENCE, "PENDING", "pi", request, T0, T0, T0 + 600))
    assert store.claim(ACCOUNT, "pi", 30, now=T0 + 1) is not None
    return store.report(ACCOUNT, "pi", name, COMPLETED, 30, result={"Inference": {"RunMs": 1.0}}, now=T0 + 2)


def test_a_compiled_artifacts_outputs_wait_for_one_worker_to_compare_them(store):
    devices = DeviceStore(store.engine)
    assert inference_job(devices, "plain", None).status == COMPLETED  # nothing to compare with
    job = inference_job(devices, "traced", "compile-1")
    assert job.status == COMPARING and devices.comparisons_waiting() == [job.id]
    assert devices.claim_comparison(job.id, "worker-a", 30, now=T0 + 3) is not None
    assert devices.claim_comparison(job.id, "worker-b", 30, now=T0 + 3) is None  # taken
    assert devices.comparisons_waiting() == []
    assert devices.renew_comparison(job.id, "worker-a", 30, now=T0 + 20)
    assert not devices.renew_comparison(job.id, "worker-b", 30, now=T0 + 20)
    assert devices.expire(now=T0 + 40) == []  # the renewed lease still holds
    verdict = Comparison(MATCHED, "compile-1", "max rel err 1e-07", "PYTORCH 2.13.0", "max rel err <= 1e-03")
    assert not devices.finish_comparison(job.id, "worker-b", verdict, now=T0 + 41)
    assert devices.finish_comparison(job.id, "worker-a", verdict, now=T0 + 41)
    done = devices.get_job(ACCOUNT, "traced")
    assert done.status == COMPLETED and done.end_time == T0 + 41 and done.lease_owner is None
    assert done.result == {"Inference": {"RunMs": 1.0}, "Comparison": verdict.to_wire()}


def test_a_comparison_whose_worker_died_or_that_nobody_took_completes_uncompared(store):
    devices = DeviceStore(store.engine)
    taken = inference_job(devices, "taken", "compile-1")
    devices.claim_comparison(taken.id, "worker-a", 30, now=T0 + 3)
    waiting = inference_job(devices, "waiting", "compile-1")
    assert [j.name for j in devices.expire(now=T0 + 34)] == ["taken"]
    comparison = devices.get_job(ACCOUNT, "taken").result["Comparison"]
    assert comparison["Status"] == NOT_COMPARED and "worker-a" in comparison["Detail"]
    assert devices.get_job(ACCOUNT, "waiting").status == COMPARING
    assert [j.name for j in devices.expire(now=T0 + 3 + COMPARE_QUEUE_S)] == ["waiting"]
    job = devices.get_job(ACCOUNT, "waiting")
    assert job.status == COMPLETED and "no server worker took it" in job.result["Comparison"]["Detail"]
    assert waiting.id not in devices.comparisons_waiting()
