"""Every check transformers makes of a plan, before anything is written.

Each source config and checkpoint and the planned config and tensors go through
dus/checks/transformers_check.py (config class, weight coverage); then every
output layer is compared with its source layer (dus/checks/equivalence.py).

The copy path never imports torch. When torch is not loaded already, the
checks run in a child process (`python -m dus.checks.run`): the import costs
a few seconds once, and the build's memory stays flat. An accepted plan is
remembered (dus/checks/cache.py): `dus plan` then `dus build`, a rebuild
or a verify of the same plan with the same code skip the child altogether.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dus.checks import cache as check_cache
from dus.checks.config_check import OUTPUT
from dus.checks.equivalence import check_layers
from dus.checks.transformers_check import check_one
from dus.errors import BuildError, InputError


def start_checks(sources: dict, config: dict, names: list[str], layers: dict | None = None) -> PendingChecks:
    """Begin checking every source's config and checkpoint, and the planned config with the planned
    tensors; then, with `layers` (dus.plan.config.equivalence_request), that every output layer is built
    as its source layer. In a child process it runs while the caller goes on (a build copies); its
    result() is the index-dependent differences accepted (--allow-index-dependent), or the refusal."""
    checks = [
        {
            "config": s.config,
            "where": str(s.directory / "config.json") if s.directory else s.ref,
            "names": list(s.tensors) if s.has_weights else None,
            "names_where": f"{s.ref}: the checkpoint",
        }
        for s in sources.values()
    ]
    checks.append({"config": config, "where": OUTPUT, "names": names, "names_where": f"{OUTPUT}: the planned tensors"})
    return PendingChecks({"checks": checks, "layers": layers})


def run(request: dict) -> list[str]:
    for check in request["checks"]:
        check_one(**check)
    layers = dict(request["layers"] or {})
    if layers.get("moe"):  # an upcycled plan: the MoE model against the dense one (dus/checks/upcycle_check.py)
        from dus.checks.upcycle_check import check_moe

        check_moe(**layers["moe"])
    layers.pop("moe", None)
    return [str(d) for d in check_layers(**layers)] if layers else []


class PendingChecks:
    """The checks of one plan: run here when torch is loaded already, else in a child process
    (request and answers through temporary files: a pipe could stall the child on a large plan)."""

    def __init__(self, request: dict, in_child: bool | None = None):
        self._child = None
        self._key = check_cache.request_key(request)
        self._accepted: list[str] | None = check_cache.lookup(self._key)
        if self._accepted is not None:
            return
        if not (("torch" not in sys.modules) if in_child is None else in_child):
            # torch is loaded already: no reason to keep the checks off this process
            self._accepted = run(request)
            check_cache.store(self._key, self._accepted)
            return
        self._files = [tempfile.TemporaryFile("w+") for _ in range(3)]
        request_file, self._out, self._err = self._files
        json.dump(request, request_file)
        request_file.seek(0)
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the dus package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "dus.checks.run"], stdin=request_file, stdout=self._out, stderr=self._err, env=env
        )

    def raise_if_refused(self) -> None:
        """Cheap, for a long write: raise now if the child has already refused the plan."""
        if self._child is not None and self._child.poll() is not None:
            self.result()

    def result(self) -> list[str]:
        """The accepted index-dependent differences, once every check has passed; else the refusal."""
        if self._child is not None:
            try:
                code = self._child.wait()
            finally:
                if self._child.returncode is None:  # interrupted while waiting: do not leave it behind
                    self._child.kill()
                    self._child.wait()
            out, err = (self._read(f) for f in (self._out, self._err))
            for f in self._files:
                f.close()
            self._child = None
            if code == InputError.exit_code and out:
                raise InputError(out)
            if code:
                last = (err.splitlines() or [f"exit status {code}"])[-1]
                raise BuildError(f"checking the configs with transformers failed: {last}")
            self._accepted = json.loads(out.splitlines()[-1])
            check_cache.store(self._key, self._accepted)
        return self._accepted

    def cancel(self) -> None:
        """The answer is no longer wanted (the caller failed first): stop the child, if running."""
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            for f in self._files:
                f.close()
            self._child = None

    @staticmethod
    def _read(f) -> str:
        f.seek(0)
        return f.read().strip()


def main() -> None:
    try:
        accepted = run(json.loads(sys.stdin.read()))
    except InputError as e:
        print(e)
        sys.exit(e.exit_code)
    print(json.dumps(accepted))


if __name__ == "__main__":
    main()
