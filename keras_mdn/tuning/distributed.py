"""Distributed search on KerasTuner's own engine: a chief oracle and workers, as processes.

KerasTuner runs the same search script in every process; the environment decides the role:
`KERASTUNER_TUNER_ID` (`"chief"` or a worker id), `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT` (the chief serves the oracle over gRPC there). Every process builds
the same hypermodel and tuner (same `directory` and `project_name`; on several machines, a
shared file system or the same path on each), and calls `tuner.search(...)`: the chief serves
trials, each worker runs them.

Two facts shape `run_distributed`: a worker waits up to an hour for a chief that is not there
(keras-tuner#990), so every wait here is bounded; and a trial whose worker dies stays
"running" in the oracle, which then never finishes, until a worker with the same id asks
again and is handed that trial back. So a dead worker is restarted with its id.
"""

import os
import signal
import socket
import subprocess
import time


def tuner_environment(tuner_id, ip="127.0.0.1", port=8000):
    """The environment variables that give a process its role in a distributed search.

    Args:
        tuner_id: `"chief"` or a worker id (unique per worker, e.g. `"tuner0"`).
        ip: the chief's address, reachable from every worker. Defaults to `"127.0.0.1"`.
        port: the chief's port. Defaults to 8000.

    Returns:
        dict of the three `KERASTUNER_*` variables.
    """
    if not isinstance(tuner_id, str) or not tuner_id:
        raise ValueError(f"`tuner_id` must be a non-empty string. Received: tuner_id={tuner_id!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"`port` must be an int in (0, 65536). Received: port={port!r}")
    return {
        "KERASTUNER_TUNER_ID": tuner_id,
        "KERASTUNER_ORACLE_IP": str(ip),
        "KERASTUNER_ORACLE_PORT": str(port),
    }


def free_port(ip="127.0.0.1"):
    """A TCP port that is free on `ip` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


class DistributedRun:
    """What `run_distributed` did.

    Attributes:
        returncodes: dict tuner id -> exit code of its last process.
        restarts: dict worker id -> times it was restarted.
        logs: dict tuner id -> path of its combined stdout/stderr log.
        seconds: wall time.
    """

    def __init__(self, returncodes, restarts, logs, seconds):
        self.returncodes = returncodes
        self.restarts = restarts
        self.logs = logs
        self.seconds = seconds


def run_distributed(command, num_workers, log_directory, port=None, ip="127.0.0.1",
                    timeout=600.0, max_restarts=1, env=None, on_poll=None):
    """Runs a search script as one chief and `num_workers` workers on this machine.

    Each process runs `command` with `tuner_environment(...)` added to its environment and
    its own process group. A worker that dies (non-zero exit) is restarted with the same id,
    at most `max_restarts` times in all, so the trial it held is run again and the search
    finishes. Everything still running at `timeout` is killed and `TimeoutError` raised.

    Args:
        command: argv list of the search script (e.g. `[sys.executable, "search.py"]`).
        num_workers: int >= 1.
        log_directory: where `<tuner id>.log` files are written.
        port: the chief's port. Defaults to a free one.
        ip: the chief's address. Defaults to `"127.0.0.1"`.
        timeout: seconds before everything is killed. Defaults to 600.
        max_restarts: restarts of dead workers allowed in all. Defaults to 1.
        env: base environment. Defaults to `os.environ`.
        on_poll: optional function `(processes: dict id -> Popen) -> None` called about
            every 0.2 s (tests use it to kill a worker mid-trial).

    Returns:
        A `DistributedRun`. Raises `RuntimeError` when the chief fails or a worker dies
        with no restart left.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(
            f"`num_workers` must be a positive int. Received: num_workers={num_workers!r}"
        )
    port = free_port(ip) if port is None else port
    os.makedirs(log_directory, exist_ok=True)
    base_env = dict(os.environ if env is None else env)
    logs = {}
    start = time.monotonic()

    def launch(tuner_id):
        path = os.path.join(log_directory, f"{tuner_id}.log")
        logs[tuner_id] = path
        log = open(path, "a")  # noqa: SIM115 (closed when the process ends)
        process = subprocess.Popen(
            command,
            env={**base_env, **tuner_environment(tuner_id, ip, port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.log_file = log
        return process

    processes = {"chief": launch("chief")}
    for index in range(num_workers):
        processes[f"worker{index}"] = launch(f"worker{index}")
    restarts = {f"worker{index}": 0 for index in range(num_workers)}
    returncodes = {}
    try:
        while True:
            if time.monotonic() - start > timeout:
                raise TimeoutError(
                    f"The distributed search did not finish within {timeout:g} s; logs in "
                    f"{log_directory}"
                )
            if on_poll is not None:
                on_poll(processes)
            for tuner_id, process in list(processes.items()):
                code = process.poll()
                if code is None or tuner_id in returncodes:
                    continue
                process.log_file.close()
                if code != 0 and tuner_id != "chief" and sum(restarts.values()) < max_restarts:
                    restarts[tuner_id] += 1
                    processes[tuner_id] = launch(tuner_id)
                    continue
                returncodes[tuner_id] = code
                if code != 0:
                    raise RuntimeError(
                        f"{tuner_id} exited with code {code}; see {logs[tuner_id]}"
                    )
            if len(returncodes) == len(processes):
                break
            time.sleep(0.2)
    finally:
        for process in processes.values():
            _stop(process)
    return DistributedRun(returncodes, restarts, logs, time.monotonic() - start)


def _stop(process, grace=5.0):
    """Terminates a process group started by `run_distributed`, then kills it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(grace)
    if not process.log_file.closed:
        process.log_file.close()
