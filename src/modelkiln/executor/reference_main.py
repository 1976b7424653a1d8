"""The sandboxed child of an inference job's comparison: `python -m modelkiln.executor.reference_main /job/spec.json`.

It reads the source model as its compile did (the same frontend, DataInputConfig and CompilerOptions), runs it
with the source framework on the job's inputs, and writes the outputs to output_path (.npz, one array per output
name) and RESULT.json. Like job_main it has no credentials and no network, and the supervisor trusts nothing it
writes but the arrays, which it compares itself.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.executor.job_main import reason_for
from modelkiln.executor.spec import ReferenceSpec


def run(spec: ReferenceSpec) -> dict[str, Any]:
    from modelkiln.compiler.against_source import source_outputs

    with np.load(spec.inputs_path, allow_pickle=False) as data:
        given = {name: data[name] for name in data.files}
    outputs, ran = source_outputs(Path(spec.model_path), spec.framework, spec.data_input_config,
                                  spec.compiler_options, given)
    np.savez(spec.output_path, **outputs)
    print(f"reference: {ran} ran on the job's inputs", flush=True)
    return {"ok": True, "ran": ran}


def main(argv: list[str]) -> int:
    spec = ReferenceSpec(**json.loads(Path(argv[1]).read_text()))
    try:
        result = run(spec)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the comparison's reason, see reason_for
        result = {"ok": False, "reason": reason_for(exc)}
    Path(spec.result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
