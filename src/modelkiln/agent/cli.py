"""The device commands: `kiln agent`, `kiln devices`, `kiln profile`, `kiln infer`. The full Kiln CLI adds
them to its own; the modelkiln-runtime distribution's `kiln` is this alone."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence

from modelkiln.agent.agent import serve
from modelkiln.agent.client import CallError, Client

TERMINAL = ("COMPLETED", "FAILED")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln on a device: run its jobs, profile models.")
    add_commands(parser.add_subparsers(required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.func(args)


def add_commands(sub: Any) -> None:
    a = sub.add_parser("agent", help="register this device with a Kiln server and run the jobs sent to it")
    _endpoint(a)
    a.add_argument("--device-name", required=True, help="this device's name in your account")
    a.add_argument("--device-type", default="", help="its TargetDevice, e.g. rasp4b, jetson_xavier (optional)")
    a.add_argument("--jobs", type=int, default=0, help="exit after this many jobs (default: run until stopped)")
    a.add_argument("--wait-s", type=int, default=20, help=argparse.SUPPRESS)
    a.set_defaults(func=_agent)
    d = sub.add_parser("devices", help="list your account's devices: last seen, arch, CPU, runtime versions")
    _endpoint(d)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_devices)
    p = sub.add_parser("profile", help="profile a compiled model on a device: load times, latency, memory, layers")
    _endpoint(p)
    p.add_argument("--model", required=True, help="s3://bucket/key of a compiled model.tar.gz")
    p.add_argument("--device", required=True, help="the device's name (kiln devices)")
    p.add_argument("--runs", type=int, default=100)
    _job_flags(p)
    p.set_defaults(func=_profile)
    i = sub.add_parser("infer", help="run a compiled model on a device on the inputs in an .npz object")
    _endpoint(i)
    i.add_argument("--model", required=True, help="s3://bucket/key of a compiled model.tar.gz")
    i.add_argument("--device", required=True)
    i.add_argument("--inputs", required=True, help="s3://bucket/key.npz: one array per input name")
    i.add_argument("--outputs", required=True, help="s3://bucket/key.npz to write the outputs to")
    _job_flags(i)
    i.set_defaults(func=_infer)


def _endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="the Kiln server's URL (default: $AWS_ENDPOINT_URL); credentials "
                                           "come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")


def _job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="the job's name (default: a new one)")
    parser.add_argument("--timeout-s", type=float, default=900, help="how long to wait for the job")
    parser.add_argument("--json", action="store_true", help="print DescribeDeviceJob's answer as JSON")


def _agent(args: argparse.Namespace) -> int:
    # SIGTERM ends the agent as Ctrl-C does: the running job is reported FAILED, its child killed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return _calling(lambda: serve(Client.from_environ(args.endpoint), args.device_name, args.device_type,
                                  args.wait_s, args.jobs, log=lambda line: print(line, flush=True)) or 0)


def _devices(args: argparse.Namespace) -> int:
    def run() -> int:
        client = Client.from_environ(args.endpoint)
        devices: List[Dict[str, Any]] = []
        token = None
        while True:
            page = client.call("Kiln.ListDevices", {"NextToken": token} if token else {})
            devices += page.get("Devices", [])
            token = page.get("NextToken")
            if not token:
                break
        if args.json:
            print(json.dumps(devices, indent=1))
            return 0
        print(f"{'NAME':24} {'STATUS':8} {'LAST SEEN (UTC)':20} {'ARCH':8} {'CPU':40} RUNTIMES")
        for d in devices:
            facts = d.get("Facts", {})
            runtimes = ", ".join(f"{k} {v}" for k, v in sorted(facts.get("Runtimes", {}).items()))
            seen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["LastSeenTime"]))
            print(f"{d['DeviceName']:24} {d['Status']:8} {seen:20} {facts.get('Arch', '?'):8} "
                  f"{str(facts.get('Cpu', '?'))[:40]:40} {runtimes}{'  (emulated)' if facts.get('Emulated') else ''}")
        return 0
    return _calling(run)


def _profile(args: argparse.Namespace) -> int:
    request = {"ModelS3Uri": args.model, "DeviceName": args.device, "Runs": args.runs}
    return _calling(lambda: _submit(args, "Kiln.CreateProfileJob", request))


def _infer(args: argparse.Namespace) -> int:
    request = {"ModelS3Uri": args.model, "DeviceName": args.device, "InputS3Uri": args.inputs,
               "OutputS3Uri": args.outputs}
    return _calling(lambda: _submit(args, "Kiln.CreateInferenceJob", request))


def _submit(args: argparse.Namespace, operation: str, request: Dict[str, Any]) -> int:
    client = Client.from_environ(args.endpoint)
    name = args.name or f"{operation.split('Create')[1][:-3].lower()}-{uuid.uuid4().hex[:12]}"
    client.call(operation, {"JobName": name, **request})
    deadline = time.monotonic() + args.timeout_s
    while True:
        job = client.call("Kiln.DescribeDeviceJob", {"JobName": name})
        if job["Status"] in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if args.json:
        print(json.dumps(job, indent=1))
    else:
        _print_job(job)
    mismatched = (job.get("Comparison") or {}).get("Status") == "MISMATCHED"
    return 0 if job["Status"] == "COMPLETED" and not mismatched else 1


def _print_job(job: Dict[str, Any]) -> None:
    print(f"{job['Kind'].lower()} job {job['JobName']} on {job['DeviceName']}: {job['Status']}")
    if job.get("FailureReason"):
        print(f"  {job['FailureReason']}")
    profile = job.get("Profile")
    if profile:
        lat = profile["Latency"]
        print(f"  {profile['Backend']} {profile['Precision']}{'  (EMULATED: not the device CPU speed)' if profile.get('Emulated') else ''}")
        print(f"  load: cold {profile['ColdLoadMs']:.1f} ms, warm {profile['WarmLoadMs']:.1f} ms; "
              f"peak memory {profile['PeakMemoryBytes'] / 2**20:.1f} MiB")
        print(f"  latency over {profile['Runs']} runs: p50 {lat['P50Ms']:.3f} ms, p90 {lat['P90Ms']:.3f} ms, "
              f"p99 {lat['P99Ms']:.3f} ms (min {lat['MinMs']:.3f}, mean {lat['MeanMs']:.3f})")
        layers = profile.get("Layers") or []
        print(f"  layers ({profile.get('LayerSource', '')}):" if layers else f"  layers: {profile.get('LayerSource', '')}")
        for layer in layers[:10]:
            print(f"    {layer['Ms']:9.4f} ms {layer.get('Share', 0):6.1%}  {layer.get('OpType', ''):18} {layer['Name']}")
    inference = job.get("Inference")
    if inference:
        print(f"  ran in {inference['RunMs']:.3f} ms; outputs written to {inference['OutputS3Uri']}:")
        for out in inference.get("Outputs", []):
            print(f"    {out['Name']}: {out['Dtype']} {out['Shape']}")
    comparison = job.get("Comparison")
    if comparison:
        print(f"  against the source model (compilation job {comparison['CompilationJobName']}): "
              f"{comparison['Status']}" + (f", by {comparison['Rule']}" if comparison.get("Rule") else ""))
        print(f"    {comparison['Detail']}" + (f"; reference: {comparison['Reference']}" if comparison.get("Reference") else ""))


def _calling(run: Any) -> int:
    try:
        return run()
    except CallError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
