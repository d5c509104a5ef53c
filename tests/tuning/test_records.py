import math

from keras_mdn.tuning import (
    Budget,
    MultiDomainHyperModel,
    SearchSpace,
    load_records,
    make_tuner,
    trial_records,
)
from tests.helpers import tensorflow_only
from tests.tuning.helpers import tiny_base, tiny_data

pytestmark = tensorflow_only


def test_records_from_the_tuner_and_from_the_directory(tmp_path):
    data = tiny_data()
    space = SearchSpace(groups={"all": ["dense1", "dense2"]}, modes=("bn", "parallel"))
    hypermodel = MultiDomainHyperModel(tiny_base(data, epochs=1), data, space,
                                       budget=Budget("parameters", 100),
                                       compile_options={"run_eagerly": True})
    tuner = make_tuner("grid", hypermodel, max_trials=5, directory=tmp_path, project_name="p")
    tuner.search(epochs=1, verbose=0)
    records = trial_records(tuner)
    assert [r.hyperparameters["all/mode"] for r in records] == ["bn", "parallel"]
    done, rejected = records
    assert done.completed and rejected.status == "FAILED"
    assert rejected.metrics == {}
    assert rejected.reason == (
        "Trial rejected before training, over budget: parameters a: 251, b: 251, c: 242 > "
        "limit 100"
    )  # a: adapters 16x8 + 8x8, BNs 2x16, head 8x3 + 3
    assert 0 <= done.value("mean_accuracy") <= 1 and done.value("seconds") > 0
    assert done.value("parameters/c") == 2 * 8 * 2 + 8 * 2 + 2  # two BNs, head 8x2 + bias
    assert math.isnan(done.value("flops"))
    loaded = load_records(tmp_path, "p")
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in records]
