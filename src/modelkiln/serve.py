"""`kiln serve` and `kiln worker`: wire the parts together (the only module besides cli.py that sees them all)."""
from __future__ import annotations

import logging
import os
import sys

from modelkiln.settings import Settings

log = logging.getLogger("kiln")


def serve(settings: Settings) -> None:
    """Run the API (SageMaker + S3 on one port) with its dispatcher and Dask executor until interrupted."""
    import distributed  # noqa: F401 - it sets up its own loggers on import; quieten them after
    import uvicorn

    from modelkiln.api import Services, create_app
    from modelkiln.auth import AccountStore
    from modelkiln.executor import DaskExecutor, Dispatcher, WorkerConfig
    from modelkiln.jobs.store import JobStore
    from modelkiln.storage import open_store

    # LocalCluster's worker processes leave semaphores for multiprocessing's resource tracker to reap at shutdown;
    # it does, and says so with a UserWarning that is no use to an operator.
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                         "ignore:resource_tracker:UserWarning"]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("alembic", "distributed"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    jobs = JobStore(settings.job_store_url)
    executor = DaskExecutor(worker_config(settings), settings.scheduler, settings.workers)
    executor.start()
    dispatcher = Dispatcher(jobs, executor.submit)
    dispatcher.start()
    services = Services(AccountStore(settings.keys_path), jobs, open_store(settings.object_store_url),
                        notify=dispatcher.wake, max_active_jobs=settings.max_active_jobs)
    where = settings.scheduler or f"a local Dask cluster of {settings.workers} worker(s)"
    log.info("serving the SageMaker and S3 APIs on http://%s:%d (data in %s; jobs run on %s)",
             settings.host, settings.port, settings.data_dir.resolve(), where)
    try:
        uvicorn.run(create_app(services), host=settings.host, port=settings.port, log_level="warning",
                    timeout_graceful_shutdown=5)
    finally:
        dispatcher.stop()
        executor.close()
        jobs.close()


def worker_config(settings: Settings):
    from modelkiln.executor import WorkerConfig

    return WorkerConfig(settings.job_store_url, settings.object_store_url, settings.job_memory_mb,
                        settings.job_file_size_mb)


def worker(scheduler: str, processes: int) -> None:
    """Become Dask worker processes of `scheduler`, one job at a time each (jobs bring their own settings)."""
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nthreads", "1",
            "--nworkers", str(processes), "--memory-limit", "0", "--no-dashboard"]
    os.execv(sys.executable, argv)
