"""A tiny search run as a separate process by the resume and distributed tests.

Every process (single, chief or worker: `keras_mdn.tuning.tuner_environment` decides) loads the
same pretrained base from `--base`, builds the same hypermodel and tuner, and searches.
`--markers` gets one file per trial a process starts (`<tuner id>_<n>`), `--kill-at-trial N`
kills the process (SIGKILL) at the end of the first epoch of its N-th trial, and the process
that holds the oracle writes every trial's record to `--records`.
"""

import argparse
import json
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402

from keras_mdn import tuning  # noqa: E402
from tests.tuning.helpers import tiny_data  # noqa: E402

STARTED = []


class Markers(keras.callbacks.Callback):
    def __init__(self, args):
        super().__init__()
        self.args = args

    def on_train_begin(self, logs=None):
        STARTED.append(time.time())
        if self.args.markers:
            tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "single")
            path = os.path.join(self.args.markers, f"{tuner_id}_{os.getpid()}_{len(STARTED)}")
            open(path, "w").close()

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(self.args.epoch_sleep)
        if len(STARTED) == self.args.kill_at_trial:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--base", required=True)
    parser.add_argument("--project", default="search")
    parser.add_argument("--kind", default="random")
    parser.add_argument("--max-trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--kill-at-trial", type=int, default=-1)
    parser.add_argument("--epoch-sleep", type=float, default=0.0)
    parser.add_argument("--markers")
    parser.add_argument("--records")
    args = parser.parse_args()
    data = tiny_data()
    base = keras.saving.load_model(args.base)
    space = tuning.SearchSpace(groups="layer", modes=("bn", "parallel", "series"),
                               ranks=("full", 2))
    hypermodel = tuning.MultiDomainHyperModel(base, data, space,
                                              compile_options={"run_eagerly": True})
    tuner = tuning.make_tuner(args.kind, hypermodel, max_trials=args.max_trials,
                              directory=args.directory, project_name=args.project)
    tuner.search(epochs=args.epochs, callbacks=[Markers(args)], verbose=0)
    if args.records and os.environ.get("KERASTUNER_TUNER_ID", "chief") == "chief":
        with open(args.records, "w") as file:
            json.dump([r.to_dict() for r in tuning.trial_records(tuner)], file)


if __name__ == "__main__":
    main()
