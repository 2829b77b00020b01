"""``python run.py ARGS`` with one fault injected, for tests/test_faults.py.

    DORA_FAULT=dora.checkpoint.save_tensors:3:torn python tests/fault_child.py task=rte ...

``MODULE.FUNCTION:N:WHEN`` kills the process with SIGKILL at the N-th call of that function: ``before``
it runs, ``after`` it returns, or ``torn`` (after it returns, its file cut to half its size first: a write
the kernel never finished). Nothing runs after a SIGKILL: no handler, no ``finally``.
"""

from __future__ import annotations

import importlib
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def tear(path) -> None:
    path = Path(path)
    if path.is_file():
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def inject(spec: str) -> None:
    target, nth, when = spec.split(":")
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real, calls = getattr(module, name), [0]

    def faulty(*args, **kwargs):
        calls[0] += 1
        if calls[0] != int(nth):
            return real(*args, **kwargs)
        if when == "before":
            die()
        out = real(*args, **kwargs)
        if when == "torn":
            tear(args[0])
        die()
        return out

    setattr(module, name, faulty)


if __name__ == "__main__":
    if os.environ.get("DORA_FAULT"):
        inject(os.environ["DORA_FAULT"])
    sys.argv = [str(REPO / "run.py"), *sys.argv[1:]]
    runpy.run_path(str(REPO / "run.py"), run_name="__main__")
