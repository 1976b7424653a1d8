"""Running compilation jobs: the job store is the queue, Dask distributes the work, a sandbox contains it.

    dispatcher (in `kiln serve`)  -- STARTING jobs -->  Dask task run_job(job_id) on any worker
    run_job: claim (lease) -> sandboxed `python -m modelkiln.executor.job_main spec.json` -> COMPLETED | FAILED
             while renewing the lease, copying the child's output into the job log, and killing the child
             on StopCompilationJob (-> STOPPED) or MaxRuntimeInSeconds (-> FAILED).
"""
from modelkiln.executor.cluster import DaskExecutor
from modelkiln.executor.dispatcher import Dispatcher
from modelkiln.executor.runner import WorkerConfig, run_job

__all__ = ["DaskExecutor", "Dispatcher", "WorkerConfig", "run_job"]
