"""`kiln`: compile a model, run an artifact, list targets. Errors are mapped to messages here, once."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from modelkiln import __version__
from modelkiln.errors import CompilationError, KilnError, ValidationError
from modelkiln.literal import parse_literal


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:
        print(f"kiln: invalid {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    except CompilationError as exc:
        print(f"kiln: {exc.stage} failed: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        return 1
    except KilnError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Compile trained models for devices, with proof.")
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="compile a model for a target (SageMaker Neo's CreateCompilationJob, offline)")
    c.add_argument("--model", required=True, type=Path, help="model.tar.gz (or a bare .onnx/.pth file)")
    c.add_argument("--framework", required=True, type=str.upper, help="ONNX | PYTORCH | ...")
    c.add_argument("--framework-version", help="InputConfig.FrameworkVersion, e.g. 2.1 (refused if Kiln cannot "
                                               "read models of that version)")
    c.add_argument("--input-config", help='DataInputConfig, e.g. \'{"data":[1,3,224,224]}\' or \'[[1,3,224,224]]\'')
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-device", help="a TargetDevice, e.g. ml_c5, rasp4b (see `kiln targets`)")
    target.add_argument("--target-platform", help='\'{"Os":"LINUX","Arch":"ARM64"}\' or Os=LINUX,Arch=ARM64')
    c.add_argument("--compiler-options", help='CompilerOptions JSON, e.g. \'{"mcpu":"cortex-a72"}\'')
    c.add_argument("--calibration", type=Path, help="calibration.npz for kiln-precision int8/auto (one array per input, "
                                                   "first axis = samples); default: the archive's calibration.npz")
    c.add_argument("--output", required=True, type=Path, help="folder for model.tar.gz and report.json")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(func=_compile)

    r = sub.add_parser("run", help="run a compiled artifact on inputs from .npy files")
    r.add_argument("artifact", type=Path, help="model.tar.gz written by kiln compile, or its folder")
    r.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy",
                   help="an input array; repeat for several inputs (in order, or NAME=FILE)")
    r.add_argument("--random", action="store_true", help="run on random inputs of the declared shapes")
    r.add_argument("--output-dir", type=Path, help="save outputs there as <output name>.npy")
    r.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    r.add_argument("--device", default="cpu", help="the artifact's TargetDeviceType: cpu (default), gpu (CUDA), vulkan, opencl")
    r.add_argument("--emulate", action="store_true",
                   help="run an artifact built for another CPU (aarch64 IREE) under qemu-user")
    r.set_defaults(func=_run)

    acc = sub.add_parser("accounts", help="create and list the accounts and access keys of a Kiln data dir")
    acc_sub = acc.add_subparsers(required=True, metavar="ACTION")
    for name, func, text in (("create", _accounts_create, "create an account with one access key"),
                             ("list", _accounts_list, "list accounts and their access key ids")):
        a = acc_sub.add_parser(name, help=text)
        _settings_flags(a, "data_dir")
        a.add_argument("--json", action="store_true", help="print JSON")
        a.set_defaults(func=func)

    s = sub.add_parser("serve", help="run the SageMaker-compatible API and S3 endpoint (one port) and the executor")
    _settings_flags(s, "host", "port", "data_dir", "store_url", "objects_url", "scheduler", *_TLS, "workers",
                    "job_memory_mb", "job_file_size_mb", "max_active_jobs")
    s.set_defaults(func=_serve)

    w = sub.add_parser("worker", help="run Dask worker processes for `kiln serve --scheduler tls://...`: they read "
                                      "the job and object stores from their own settings, not from the tasks")
    _settings_flags(w, "data_dir", "store_url", "objects_url", "scheduler", *_TLS, "job_memory_mb", "job_file_size_mb")
    w.add_argument("--processes", type=int, default=1, help="worker processes, each running one job at a time")
    w.set_defaults(func=_worker)

    lg = sub.add_parser("logs", help="print a compilation job's log")
    lg.add_argument("name", help="the CompilationJobName")
    lg.add_argument("--account", help="the job's account id (needed when the data dir has several accounts)")
    _settings_flags(lg, "data_dir", "store_url")
    lg.set_defaults(func=_logs)

    t = sub.add_parser("targets", help="list every TargetDevice and TargetPlatform and what Kiln builds for it")
    t.add_argument("--markdown", action="store_true", help="print the README's support matrix")
    t.set_defaults(func=_targets)
    from modelkiln.agent.cli import add_commands  # the device commands: agent, devices, profile, infer
    add_commands(sub)
    return parser


def _compile(args: argparse.Namespace) -> int:
    from modelkiln.compiler import CompileJob, compile_job, render_text

    job = CompileJob(
        model=args.model, framework=args.framework, output_dir=args.output,
        data_input_config=args.input_config, target_device=args.target_device,
        target_platform=_platform(args.target_platform) if args.target_platform else None,
        compiler_options=args.compiler_options, framework_version=args.framework_version,
        calibration=args.calibration,
    )

    def progress(stage: str, message: str) -> None:
        if not args.quiet:
            print(f"[{stage}] {message}", file=sys.stderr, flush=True)

    report = compile_job(job, progress)
    print(json.dumps(report.to_json(), indent=2) if args.json else render_text(report))
    return 0


def _platform(text: str) -> dict[str, str]:
    """TargetPlatform as JSON or as the AWS CLI's shorthand Os=LINUX,Arch=ARM64."""
    field = "OutputConfig.TargetPlatform"
    if "=" in text and not text.lstrip().startswith("{"):
        pairs = [p.split("=", 1) for p in text.split(",")]
        if any(len(p) != 2 for p in pairs):
            raise ValidationError(field, "shorthand must look like Os=LINUX,Arch=ARM64")
        return {k.strip(): v.strip() for k, v in pairs}
    value = parse_literal(text, field)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValidationError(field, 'must be an object such as {"Os": "LINUX", "Arch": "ARM64"}')
    return value


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from modelkiln.runtime import ArtifactError, Model

    try:
        if args.emulate:
            meta, outputs, how = _run_emulated(args)
        else:
            model = Model(args.artifact, device=args.device, threads=args.threads)
            meta, outputs, how = model.meta, model.run(_inputs(args, model.meta)), "on this host"
    except (ArtifactError, OSError, RuntimeError) as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 1
    print(f"{meta['Backend']['Name']} artifact for {meta['Requirements']['TargetDevice']}, run {how}")
    for name, out in zip([o["name"] for o in meta["Model"]["Outputs"]], outputs):
        flat = out.reshape(-1)
        print(f"{name}: shape {list(out.shape)} {out.dtype} first values {np.array2string(flat[:6], precision=5)}")
        if args.output_dir:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            np.save(args.output_dir / f"{name}.npy", out)
    return 0


def _inputs(args: argparse.Namespace, meta: dict):
    """Inputs from --input files (in order, or NAME=FILE) or --random, for the artifact's declared inputs."""
    import numpy as np

    from modelkiln.runtime import ArtifactError

    specs = meta["Model"]["Inputs"]
    if args.random:
        rng = np.random.default_rng(0)
        # -1: a tree model's free row count; one row will do
        return [rng.standard_normal([1 if d == -1 else d for d in i["shape"]]).astype(i["dtype"]) for i in specs]
    if not args.input:
        raise ArtifactError(f"give --input FILE.npy (inputs: {[i['name'] for i in specs]}) or --random")
    if any("=" in i for i in args.input):
        return {k: np.load(v) for k, v in (i.split("=", 1) for i in args.input)}
    return [np.load(i) for i in args.input]


def _run_emulated(args: argparse.Namespace):
    """Run an aarch64 IREE artifact here under qemu-user, as Kiln's own verification does."""
    from modelkiln.compiler import emulation
    from modelkiln.runtime import ArtifactError
    from modelkiln.runtime.model import unpack

    directory, meta, _tmp = unpack(args.artifact)
    backend, arch = meta["Backend"], meta["Requirements"]["Arch"]
    if backend["Name"] == "iree":
        emulator = emulation.find_emulator(arch)
    else:
        emulator = emulation.find_python_emulator(arch, backend["Runtime"])
    if isinstance(emulator, str):
        raise ArtifactError(f"cannot emulate {arch}: {emulator}")
    inputs = _inputs(args, meta)
    if isinstance(inputs, dict):
        inputs = [inputs[i["name"]] for i in meta["Model"]["Inputs"]]
    if isinstance(emulator, emulation.Emulator):
        outputs = emulation.run_iree(emulator, directory / backend["Files"][0], backend["Entry"], inputs,
                                     len(meta["Model"]["Outputs"]))
    else:
        outputs = emulation.run_runtime(emulator, directory, meta, inputs)
    return meta, outputs, f"under {emulator.describe()}"


_SETTING_HELP = {
    "host": "address to listen on (default 127.0.0.1)",
    "port": "port for both APIs (default 8080)",
    "data_dir": "keys, job store, objects and logs live here (default ./kiln-data)",
    "store_url": "job store: sqlite:///FILE or postgresql+psycopg://USER@HOST/DB (default: SQLite in the data dir)",
    "objects_url": "object store: a directory, or http(s)://[KEY:SECRET@]HOST:PORT?region=R for an S3 endpoint",
    "scheduler": "an external Dask scheduler, tls://HOST:PORT or tcp://HOST:PORT (default: start a local cluster)",
    "tls_ca_file": "CA certificate that signs the Dask scheduler's and workers' certificates (PEM)",
    "tls_cert": "this node's certificate for Dask TLS (PEM)",
    "tls_key": "this node's private key for Dask TLS (PEM)",
    "workers": "local Dask worker processes, each running one job at a time",
    "job_memory_mb": "memory limit of each job's sandboxed compiler process (default 8192)",
    "job_file_size_mb": "largest file a job may write (default 4096)",
    "max_active_jobs": "unfinished jobs an account may have; more is ResourceLimitExceeded (default 20)",
}


_TLS = ("tls_ca_file", "tls_cert", "tls_key")


def _settings_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Flags for the named settings; unset flags fall back to KILN_* variables, the config file, defaults."""
    from modelkiln.settings import FIELDS

    parser.add_argument("--config", type=Path, help="TOML config file (default: $KILN_CONFIG, or DATA_DIR/kiln.toml)")
    for name in names:
        kind = int if FIELDS[name].type == "int" else Path if FIELDS[name].type == "Path" else str
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind,
                            help=f"{_SETTING_HELP[name]} [$KILN_{name.upper()}]")


def _settings(args: argparse.Namespace):
    from modelkiln.settings import FIELDS, load_settings

    return load_settings({name: getattr(args, name, None) for name in FIELDS}, config=args.config)


def _account_store(args: argparse.Namespace):
    from modelkiln.auth import AccountStore

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return AccountStore(settings.keys_path)


def _serve(args: argparse.Namespace) -> int:
    from modelkiln.serve import serve

    serve(_settings(args))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from modelkiln.serve import worker

    worker(_settings(args), args.processes)
    return 0


def _logs(args: argparse.Namespace) -> int:
    from modelkiln.api.kiln_routes import format_time
    from modelkiln.auth import AccountStore
    from modelkiln.jobs.store import JobStore

    settings = _settings(args)
    account = args.account
    if account is None:
        accounts = AccountStore(settings.keys_path).accounts()
        if len(accounts) != 1:
            raise ValidationError("--account", f"the data dir has {len(accounts)} accounts; name the job's account")
        account = accounts[0]
    with JobStore(settings.job_store_url, migrate=False) as store:
        for when, line in store.read_log(account, args.name):
            print(f"{format_time(when)}  {line}")
    return 0


def _accounts_create(args: argparse.Namespace) -> int:
    creds = _account_store(args).create_account()
    record = {"AccountId": creds.account_id, "AccessKeyId": creds.access_key_id,
              "SecretAccessKey": creds.secret_access_key}
    if args.json:
        print(json.dumps(record))
    else:
        print("\n".join(f"{k}: {v}" for k, v in record.items()))
        print("Keep the secret: it is shown only now (it is stored in keys.json, mode 0600).", file=sys.stderr)
    return 0


def _accounts_list(args: argparse.Namespace) -> int:
    store = _account_store(args)
    listing = {account: store.access_keys(account) for account in store.accounts()}
    if args.json:
        print(json.dumps([{"AccountId": a, "AccessKeyIds": keys} for a, keys in listing.items()]))
    else:
        for account, keys in listing.items():
            print(f"{account}  {', '.join(keys)}")
    return 0


def _targets(args: argparse.Namespace) -> int:
    from modelkiln.compiler.matrix import render_markdown, render_text

    print(render_markdown() if args.markdown else render_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
