import keras
import numpy as np
import pytest

from keras_mdn import DomainHead, FactorizedDense
from keras_mdn.surgery.graph import (
    FunctionalGraph,
    GraphInput,
    Node,
    TensorRef,
    call_with_domain,
    tensor_keys,
)
from tests.helpers import rng, to_numpy
from tests.surgery.toy import infer, toy_multi_domain


def test_nodes_and_inputs_are_named_records_in_topological_order():
    model = toy_multi_domain()
    graph = FunctionalGraph(model)
    assert all(isinstance(i, GraphInput) for i in graph.inputs)
    assert [i.name for i in graph.inputs] == ["image", "domain"]
    assert graph.domain_input == "domain" and graph.input_names() == ["image"]
    assert graph.input_names(domain=True) == ["image", "domain"]
    assert graph.num_domains == 3
    assert all(isinstance(node, Node) for node in graph.nodes)
    names = [node.name for node in graph.nodes]
    assert names == ["conv1", "bn1", "relu1", "conv2", "bn2", "pool", "head"]
    seen = {i.key for i in graph.inputs}
    for node in graph.nodes:
        assert all(key[:2] in seen for key in node.tensor_keys())
        seen.add(node.key)
    head = graph.nodes[-1]
    assert head.operation is model.get_layer("head")
    assert all(isinstance(ref, TensorRef) for ref in keras.tree.flatten(head.args)
               if isinstance(ref, TensorRef))
    assert graph.uses[("pool", 0, 0)] == 1 and graph.uses[("domain", 0, 0)] == 5
    assert [graph.nodes[i].name for i in graph.consumers[("domain", 0, 0)]] == [
        "conv1", "bn1", "conv2", "bn2", "head"]


def test_run_evaluates_the_graph_with_a_handler():
    model = toy_multi_domain()
    graph = FunctionalGraph(model)
    x = rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    calls = []

    def handler(op, name, args, kwargs, key):
        calls.append(name)
        if "training" in kwargs or name.startswith(("bn", "conv")):
            kwargs = {**kwargs, "training": False}
        return op(*args, **kwargs)

    out = graph.run({"image": x, "domain": np.array([1, 2], "int32")}, handler)
    np.testing.assert_allclose(to_numpy(out), infer(model, x, [1, 2]), atol=1e-6)
    assert calls == [node.name for node in graph.nodes]


def test_shared_layers_and_keras_ops_nodes():
    inputs = keras.Input((4,), name="features")
    dense = keras.layers.Dense(4, name="shared")
    y = dense(dense(inputs))
    y = keras.ops.add(y, inputs)
    model = keras.Model(inputs, y)
    graph = FunctionalGraph(model)
    assert [node.name for node in graph.nodes][:2] == ["shared", "shared_1"]
    assert graph.domain_input is None and graph.num_domains == 0
    x = rng(1).normal(size=(3, 4)).astype("float32")
    out = graph.run({"features": x}, lambda op, name, args, kwargs, key: op(*args, **kwargs))
    np.testing.assert_allclose(to_numpy(out), to_numpy(model(x)), atol=1e-6)
    assert tensor_keys(([TensorRef(("a", 0, 0))], {"k": TensorRef(("b", 1, 0))})) == [
        ("a", 0, 0), ("b", 1, 0)]


def test_call_with_domain_static_and_classes_only():
    image = keras.Input((5,), name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    x = FactorizedDense(6, num_domains=2, rank=2, name="fdense")(image, task=domain)
    logits = DomainHead([3, 2], name="head")(x, domain)
    model = keras.Model([image, domain], logits)
    x = rng(2).normal(size=(2, 5)).astype("float32")
    for d in range(2):
        expected = to_numpy(model([x, np.full((2,), d, "int32")]))
        np.testing.assert_allclose(to_numpy(call_with_domain(model, x, d)), expected, atol=1e-6)
        only = to_numpy(call_with_domain(model, {"features": x}, d, head_classes_only=True))
        np.testing.assert_allclose(only, expected[:, : [3, 2][d]], atol=1e-6)


def test_rejects_what_it_cannot_read():
    with pytest.raises(TypeError, match="keras.Model"):
        FunctionalGraph("model")
    image = keras.Input((3,), name="a")
    ids = [keras.Input((), dtype="int32", name=n) for n in ("d1", "d2")]
    y = keras.layers.Concatenate()([image] + [keras.ops.cast(i[:, None], "float32")
                                              for i in ids])
    with pytest.raises(ValueError, match="one integer"):
        FunctionalGraph(keras.Model([image] + ids, y))
    other = keras.Input((3,), name="b")
    two_inputs = keras.Model([image, other, ids[0]], keras.layers.Add()([image, other]))
    with pytest.raises(ValueError, match="Pass a dict"):
        call_with_domain(two_inputs, np.zeros((1, 3), "float32"), 0)
