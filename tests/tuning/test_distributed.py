import collections
import json
import os
import signal
import sys

import pytest

from keras_mdn.tuning import load_records, run_distributed, tuner_environment
from tests.helpers import tensorflow_only
from tests.tuning.helpers import tiny_base, tiny_data
from tests.tuning.test_tuners import ROOT, SCRIPT, run_script

pytestmark = tensorflow_only

TRIALS = 4


def test_chief_and_two_workers_finish_even_when_a_worker_is_killed(tmp_path):
    base = tmp_path / "base.keras"
    tiny_base(tiny_data(), epochs=1).save(base)
    markers = tmp_path / "markers"
    markers.mkdir()
    killed = []

    def kill_worker1_mid_trial(processes):
        started = [name for name in os.listdir(markers) if name.startswith("worker1_")]
        if started and not killed:
            os.killpg(processes["worker1"].pid, signal.SIGKILL)
            killed.append(started[0])

    command = [sys.executable, SCRIPT, str(tmp_path / "search"), "--base", str(base),
               "--max-trials", str(TRIALS), "--epochs", "2", "--epoch-sleep", "0.3",
               "--markers", str(markers), "--records", str(tmp_path / "records.json")]
    env = {**os.environ, "PYTHONPATH": ROOT, "KERAS_BACKEND": "tensorflow"}
    run = run_distributed(command, num_workers=2, log_directory=tmp_path / "logs",
                          timeout=300, max_restarts=1, env=env, on_poll=kill_worker1_mid_trial)
    assert killed and run.restarts == {"worker0": 0, "worker1": 1}
    assert run.returncodes == {"chief": 0, "worker0": 0, "worker1": 0}

    records = json.loads((tmp_path / "records.json").read_text())
    assert len(records) == TRIALS and all(r["status"] == "COMPLETED" for r in records)
    assert [r.to_dict() for r in load_records(tmp_path / "search", "search")] == records
    # Both workers ran trials; the killed worker's trial was run again by its restart.
    started = collections.Counter(name.split("_")[0] for name in os.listdir(markers))
    assert started["worker0"] >= 1 and started["worker1"] >= 2
    assert started["worker0"] + started["worker1"] == TRIALS + 1
    assert "chief" not in started

    # A one-process search of the same space: same number of trials, same record format.
    single = run_script(tmp_path / "single", base, "--max-trials", str(TRIALS),
                        "--records", str(tmp_path / "single.json"))
    assert single.returncode == 0, single.stderr[-2000:]
    alone = json.loads((tmp_path / "single.json").read_text())
    assert len(alone) == len(records)
    assert [sorted(r) for r in alone] == [sorted(r) for r in records]
    assert [sorted(r["metrics"]) for r in alone] == [sorted(r["metrics"]) for r in records]


def test_environment_and_bad_arguments(tmp_path):
    assert tuner_environment("worker3", port=9001) == {
        "KERASTUNER_TUNER_ID": "worker3",
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": "9001",
    }
    with pytest.raises(ValueError, match="tuner_id"):
        tuner_environment("")
    with pytest.raises(ValueError, match="port"):
        tuner_environment("chief", port=70000)
    with pytest.raises(ValueError, match="num_workers"):
        run_distributed(["true"], num_workers=0, log_directory=tmp_path)


def test_timeout_kills_everything(tmp_path):
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(TimeoutError, match="did not finish within 1 s"):
        run_distributed(command, num_workers=1, log_directory=tmp_path, timeout=1)
