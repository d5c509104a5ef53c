"""Search adapter placement, adapter ranks and tensor ranks with KerasTuner.

`import keras_mdn.tuning` needs the `tuning` extra (keras-tuner); `import keras_mdn` does not
import it.

Example:

>>> from keras_mdn import tuning
>>> space = tuning.SearchSpace(groups="stage", modes=("bn", "parallel"), ranks=("full", 4))
>>> hypermodel = tuning.MultiDomainHyperModel(pretrained, data, space,
...                                           budget=tuning.Budget("parameters", 50_000))
>>> tuner = tuning.make_tuner("bayesian", hypermodel, max_trials=20, directory="search")
>>> tuner.search(epochs=5)
>>> front = tuning.pareto_front(tuning.trial_records(tuner))
>>> print(front.table()); front.plot("front.png")
>>> model = front.model(tuner, front.best_within(20_000))  # for keras_mdn.export
"""

from keras_mdn.tuning.base_model import clone_pretrained, multi_domain_base
from keras_mdn.tuning.distributed import (
    DistributedRun,
    free_port,
    run_distributed,
    tuner_environment,
)
from keras_mdn.tuning.hypermodel import MultiDomainHyperModel
from keras_mdn.tuning.objectives import OBJECTIVE, Budget, recorded_metrics, trial_costs
from keras_mdn.tuning.pareto import ParetoFront, pareto_front
from keras_mdn.tuning.placement import place
from keras_mdn.tuning.records import TrialRecord, load_records, trial_records
from keras_mdn.tuning.search_space import Design, SearchSpace
from keras_mdn.tuning.tuners import make_tuner

__all__ = [
    "OBJECTIVE",
    "Budget",
    "Design",
    "DistributedRun",
    "MultiDomainHyperModel",
    "ParetoFront",
    "SearchSpace",
    "TrialRecord",
    "clone_pretrained",
    "free_port",
    "load_records",
    "make_tuner",
    "multi_domain_base",
    "pareto_front",
    "place",
    "recorded_metrics",
    "run_distributed",
    "trial_costs",
    "trial_records",
    "tuner_environment",
]
