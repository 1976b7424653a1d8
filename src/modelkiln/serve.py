"""`kiln serve` and `kiln worker`: wire the parts together (the only module besides cli.py that sees them all)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from modelkiln.settings import Settings

log = logging.getLogger("kiln")


def serve(settings: Settings) -> None:
    """Run the API (SageMaker + S3 on one port) with its dispatcher and Dask executor until interrupted."""
    import distributed  # noqa: F401 - it sets up its own loggers on import; quieten them after
    import uvicorn

    from modelkiln.api import Services, create_app
    from modelkiln.auth import AccountStore
    from modelkiln.executor import DaskExecutor, Dispatcher, sandbox
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
    if not settings.scheduler:  # the local workers' jobs are sandboxed here: refuse to start if they cannot be
        why = sandbox.probe()
        if why:
            raise SystemExit(f"kiln serve: jobs cannot be sandboxed on this machine: {why}")
    jobs = JobStore(settings.job_store_url)
    executor = DaskExecutor(settings.scheduler, settings.workers, env=worker_env(settings),
                            security=dask_security(settings))
    executor.start()
    dispatcher = Dispatcher(jobs, executor.submit, executor.submit_comparison)
    dispatcher.start()
    services = Services(AccountStore(settings.keys_path), jobs, open_store(settings.object_store_url),
                        notify=dispatcher.wake, max_active_jobs=settings.max_active_jobs,
                        device_lease_s=settings.device_lease_s)
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


def worker_env(settings: Settings) -> dict[str, str]:
    """What a worker process needs to run any job, as its environment (runner.WorkerConfig reads it): workers
    read their own configuration, so no task sent through the scheduler carries a store's credentials."""
    return {"KILN_STORE_URL": settings.job_store_url, "KILN_OBJECTS_URL": settings.object_store_url,
            "KILN_JOB_MEMORY_MB": str(settings.job_memory_mb), "KILN_JOB_FILE_SIZE_MB": str(settings.job_file_size_mb)}


def dask_security(settings: Settings):
    """Dask TLS with the configured certificates (mutual: the scheduler and every node present one signed by
    the CA), or None for a plain tcp:// scheduler."""
    files = (settings.tls_ca_file, settings.tls_cert, settings.tls_key)
    if not any(files):
        return None
    if not all(files) or not all(Path(f).is_file() for f in files):
        raise SystemExit("Dask TLS needs all of tls_ca_file, tls_cert and tls_key, each an existing PEM file: "
                         f"got {files}")
    from distributed.security import Security

    return Security(tls_ca_file=settings.tls_ca_file, tls_client_cert=settings.tls_cert,
                    tls_client_key=settings.tls_key, tls_worker_cert=settings.tls_cert,
                    tls_worker_key=settings.tls_key, require_encryption=True)


def worker(settings: Settings, processes: int) -> None:
    """Become Dask worker processes of the scheduler, one job at a time each, configured from `settings`."""
    from modelkiln.executor import sandbox

    if not settings.scheduler:
        raise SystemExit("kiln worker: give the Dask scheduler with --scheduler tls://HOST:PORT (or KILN_SCHEDULER)")
    why = sandbox.probe()
    if why:
        raise SystemExit(f"kiln worker: jobs cannot be sandboxed on this machine: {why}")
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", settings.scheduler, "--nthreads", "1",
            "--nworkers", str(processes), "--memory-limit", "0", "--no-dashboard"]
    if dask_security(settings) is not None:
        argv += ["--tls-ca-file", settings.tls_ca_file, "--tls-cert", settings.tls_cert, "--tls-key", settings.tls_key]
    os.execve(sys.executable, argv, {**os.environ, **worker_env(settings)})
