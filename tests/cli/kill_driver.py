"""Run forget, synthesize or prune and SIGKILL this process at a pause point (for test_lifecycle_kill).

    python -m tests.cli.kill_driver REPO OP POINT [ARG...]

POINT is a hook point name, or ``none`` (the parent kills it at a random moment instead).
"""

from __future__ import annotations

import os
import signal
import sys

from cbtbackup.pipeline.forget import ForgetOptions, run_forget
from cbtbackup.pipeline.prune import PruneOptions, run_prune
from cbtbackup.pipeline.synthesize import synthesize
from cbtbackup.repo.location import StoreOptions, open_repository


def main() -> None:
    repo_path, op, point, *args = sys.argv[1:]

    def hook(p: str) -> None:
        if p == point:
            os.kill(os.getpid(), signal.SIGKILL)

    repo = open_repository(repo_path, StoreOptions(None), os.environ.get("CBTBACKUP_PASSWORD"))
    print("started", flush=True)
    if op == "forget":
        run_forget(repo, ForgetOptions(ids=tuple(args)), hook=hook)
    elif op == "prune":
        run_prune(repo, PruneOptions(), hook=hook)
    elif op == "synthesize":
        ref = repo.find(args[0])
        with repo.locks.acquire("synthesize", exclusive=(f"chain:{ref.name}",), shared=("repo",)):
            hook("locked")
            synthesize(repo, ref)
            hook("written")
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()
