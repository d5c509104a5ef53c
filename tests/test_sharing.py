"""Sharing strength rho and its plot."""

import keras
import numpy as np
import pytest

from keras_mdn import FactorizedDense
from keras_mdn.sharing import plot_sharing_strength, sharing_strength, sharing_strengths


def test_rho_reference_values():
    assert sharing_strength(np.eye(4)) == pytest.approx(0.0)
    assert sharing_strength(np.ones((3, 2)) * [[1.0], [2.0], [5.0]]) == pytest.approx(1.0)
    codes = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    expected = (np.sqrt(0.5) + 0.0 + np.sqrt(0.5)) / 3
    assert sharing_strength(codes) == pytest.approx(expected)
    assert np.isnan(sharing_strength(np.ones((1, 3))))


def test_plot_per_layer(tmp_path):
    features = keras.Input((6,), name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    hidden = FactorizedDense(5, 3, "tucker", rank=2, name="lower")(features, domain=domain)
    outputs = FactorizedDense(2, 3, "tt", rank=2, name="upper")(hidden, domain=domain)
    model = keras.Model([features, domain], outputs)
    strengths = sharing_strengths(model)
    assert list(strengths) == ["lower", "upper"]
    assert all(-1.0 <= value <= 1.0 for value in strengths.values())
    path = tmp_path / "rho.png"
    figure = plot_sharing_strength(model, path=str(path))
    assert path.stat().st_size > 1000
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["lower", "upper"]
    compare = plot_sharing_strength({"a": strengths, "b": strengths}, path=str(path))
    assert len(compare.axes[0].patches) == 4
