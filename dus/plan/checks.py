"""Every check transformers makes of a plan, before anything is written.

Each source config and checkpoint and the planned config and tensors go through
dus/read/transformers_check.py (config class, weight coverage); then every
output layer is compared with its source layer (dus/plan/equivalence.py).

The copy path never imports torch. When torch is not loaded already, the
checks run in a child process (`python -m dus.plan.checks`): the import costs
a few seconds once, and the build's memory stays flat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dus.errors import BuildError, InputError
from dus.plan.equivalence import check_layers
from dus.read.config_check import OUTPUT
from dus.read.transformers_check import check_one


def check_plan(sources: dict, config: dict, names: list[str], layers: dict | None = None) -> list[str]:
    """Every source's config and checkpoint, and the planned config with the planned tensors; then,
    with `layers` (dus.plan.equivalence.equivalence_request), that every output layer is built as its
    source layer. Returns the index-dependent differences accepted (--allow-index-dependent)."""
    checks = [{"config": s.config, "where": str(s.directory / "config.json") if s.directory else s.ref,
               "names": list(s.tensors) if s.has_weights else None, "names_where": f"{s.ref}: the checkpoint"}
              for s in sources.values()]
    checks.append({"config": config, "where": OUTPUT, "names": names, "names_where": f"{OUTPUT}: the planned tensors"})
    request = {"checks": checks, "layers": layers}
    if "torch" in sys.modules:  # already paid for: no reason to keep it off this process
        return run(request)
    return _in_child(request)


def run(request: dict) -> list[str]:
    for check in request["checks"]:
        check_one(**check)
    return [str(d) for d in check_layers(**request["layers"])] if request["layers"] else []


def _in_child(request: dict) -> list[str]:
    root = str(Path(__file__).resolve().parents[2])  # the directory holding the dus package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "-m", "dus.plan.checks"], input=json.dumps(request),
                            capture_output=True, text=True, env=env)
    if result.returncode == InputError.exit_code and result.stdout.strip():
        raise InputError(result.stdout.strip())
    if result.returncode:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise BuildError(f"checking the configs with transformers failed: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    try:
        accepted = run(json.loads(sys.stdin.read()))
    except InputError as e:
        print(e)
        sys.exit(e.exit_code)
    print(json.dumps(accepted))


if __name__ == "__main__":
    main()
