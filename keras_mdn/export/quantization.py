"""Post-training quantisation options for the TFLite converter.

- `None`: float32 weights and activations. Parity: max abs logit error <= 1e-5.
- `"float16"`: float16 weights (dequantised at load), float32 activations.
- `"dynamic_range"`: int8 weights of tensors with >= 1024 values, float32 activations.
- `"int8"`: int8 weights and activations, calibrated on a representative dataset drawn from
  every domain; ops without an int8 kernel stay float (TFLITE_BUILTINS, never Flex).

Input and output stay float32 in every option, so the app code does not change.

Documented tolerances (`TOLERANCES`, used by the tests): the max abs logit error divided by
the spread (max - min) of the float model's logits on the batch: 1e-5 absolute for float32,
1e-2 for float16, 5e-2 for dynamic range, 0.25 for int8. The benchmark reports the measured
errors and the top-1 agreement with the Keras model.
"""

QUANTIZATIONS = (None, "float16", "dynamic_range", "int8")

TOLERANCES = {None: 1e-5, "float16": 1e-2, "dynamic_range": 5e-2, "int8": 0.25}


def check_quantization(quantization):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    return quantization


def configure(converter, quantization, representative_dataset=None):
    """Sets a `tf.lite.TFLiteConverter` up for `quantization` (built-in ops only, no Flex).

    Args:
        converter: the converter.
        quantization: one of `QUANTIZATIONS`.
        representative_dataset: a callable returning an iterator over converter inputs
            (`(signature_key, {input_name: array})`), required for `"int8"`.
    """
    import tensorflow as tf

    check_quantization(quantization)
    # Flex (SELECT_TF_OPS) is never enabled: an op without a builtin kernel fails to convert.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is None:
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative_dataset is None:
            raise ValueError(
                'quantization="int8" needs representative data. Received: '
                "representative_data=None"
            )
        converter.representative_dataset = representative_dataset
    return converter
