"""Running compilation jobs: the job store is the queue, Dask distributes the work, a sandbox contains it.

    dispatcher (in `kiln serve`)  -- STARTING jobs -->  Dask task run_job(job_id) on any worker
    run_job (the supervisor, holding the worker's own store credentials):
        claim (lease) -> fetch S3Uri into the job directory
        -> sandboxed `python -m modelkiln.executor.job_main /job/spec.json` (sandbox.py: no credentials, no
           network, only /job writable): unpack, convert, compile, verify, package into /job/out
        -> with kiln-profile-on: every verified candidate timed on the account's device (on_device.py)
        -> upload the artifact to S3OutputLocation -> COMPLETED | FAILED
    while renewing the lease, copying the child's output into the job log, and killing the child (its whole
    PID namespace) on StopCompilationJob (-> STOPPED) or MaxRuntimeInSeconds (-> FAILED).
"""
from modelkiln.executor.cluster import DaskExecutor
from modelkiln.executor.dispatcher import Dispatcher
from modelkiln.executor.runner import WorkerConfig, run_job

__all__ = ["DaskExecutor", "Dispatcher", "WorkerConfig", "run_job"]
