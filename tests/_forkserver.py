"""A fork server for CLI fault tests: import torch, transformers and tunescope once, fork a child per run.

Each run is a real process (its own exit code, file descriptors, signals, ``kill -9``) that starts in
milliseconds instead of the seconds a fresh ``python -m tunescope`` spends on imports. The protocol is
one JSON request per line on stdin::

    {"argv": [...], "cwd": DIR, "env": {...}, "stdout": FILE, "stderr": FILE, "umask": 18,
     "faults": [{"patch": "module:attr.path", "when": 1, "action": "sigkill_before"}]}

answered by ``{"pid": N}`` when the child starts and ``{"rc": CODE}`` when it ends (``-9`` when
killed). A fault replaces a function in the child only: on its ``when``-th call it sends the child
SIGKILL or SIGINT, before or after calling the original, so a test can kill the command exactly during
a final write or interrupt it inside a stage.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402, F401

import tunescope.cli.main as cli  # noqa: E402

for _module in (
    "tunescope.pipeline",
    "tunescope.extract",
    "tunescope.finetune",
    "tunescope.surgery",
    "tunescope.stages",
    "tunescope.report",
    "matplotlib.pyplot",
    "jinja2",
    "sklearn.linear_model",
    "safetensors.torch",
):
    importlib.import_module(_module)


def _resolve(spec: str) -> tuple[Any, str]:
    module_name, _, path = spec.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, name


def _install(fault: dict[str, Any]) -> None:
    owner, name = _resolve(fault["patch"])
    original = getattr(owner, name)
    when, action = int(fault.get("when", 1)), fault["action"]
    sig = signal.SIGKILL if action.startswith("sigkill") else signal.SIGINT
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        hit = calls[0] == when
        if hit and action.endswith("_before"):
            os.kill(os.getpid(), sig)
        result = original(*args, **kwargs)
        if hit and action.endswith("_after"):
            os.kill(os.getpid(), sig)
        return result

    setattr(owner, name, wrapper)


def _child(request: dict[str, Any]) -> int:
    for fd, key in ((1, "stdout"), (2, "stderr")):
        handle = os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    os.chdir(request["cwd"])
    os.environ.update(request.get("env", {}))
    os.umask(int(request.get("umask", 0o022)))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    for fault in request.get("faults", []):
        _install(fault)
    try:
        return int(cli.main(list(request["argv"])))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1


def serve() -> None:
    channel = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        channel.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        channel.write(json.dumps({"pid": pid}) + "\n")
        channel.flush()
        _, status = os.waitpid(pid, 0)
        channel.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        channel.flush()


if __name__ == "__main__":
    serve()
