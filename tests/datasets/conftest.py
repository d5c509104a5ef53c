import pytest

from tests.helpers import skip_unless_tensorflow


@pytest.fixture(autouse=True)
def _skip_tensorflow_only(request):
    # tf.data pipelines: the tests marked tensorflow_only run on the TensorFlow backend only.
    if request.node.get_closest_marker("tensorflow_only"):
        skip_unless_tensorflow()
