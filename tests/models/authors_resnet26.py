"""The authors' ResNet-26 forward pass ported to NumPy, and their weights read from ours.

An independent reference for `keras_mdn.models.resnet26`: it follows the module tree of
srebuffi/residual_adapters, models.py (`conv_task`, `conv1x1`, `BasicBlock`, `ResNet`) in
PyTorch's conventions (NCHW activations, `(out, in, kh, kw)` kernels, convs with
`padding=1` on every side, `nn.AvgPool2d(2)`, `nn.BatchNorm2d` with `eps=1e-5` and
momentum 0.1, `nn.Linear` weights `(out, in)`), and reads its parameters from a dict keyed by
the names their `state_dict()` uses (`layer2.0.conv1.parallel_conv.3.conv.weight`, ...).
`authors_state_dict` builds that dict from a Keras model's weights, so the test compares the
two networks on the same parameters and never shares code with the model under test.

One deviation, only where the authors' code fails: their first-block shortcut concatenates
as many zero channels as its input has, which adds only when `int(64 f) == 2 int(32 f)`;
here it pads up to the block's width (the same thing wherever theirs runs).
"""

import numpy as np

MODES = {None: "normal", "parallel": "parallel_adapters", "series": "series_adapters"}
EPSILON = 1e-5  # nn.BatchNorm2d's default, never changed in their code
MOMENTUM = 0.1  # likewise (PyTorch convention: running = (1 - m) running + m batch)


# === Their modules, inference and training mode ===


def conv2d(x, weight, stride=1, padding=0):
    """`nn.Conv2d(bias=False)`: x (N, C, H, W), weight (O, C, kh, kw), symmetric padding."""
    out_channels, _, kh, kw = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    height = (x.shape[2] - kh) // stride + 1
    width = (x.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], out_channels, height, width))
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i : i + stride * (height - 1) + 1 : stride,
                       j : j + stride * (width - 1) + 1 : stride]
            y += np.einsum("nchw,oc->nohw", window, weight[:, :, i, j])
    return y


class BatchNorm2d:
    """`nn.BatchNorm2d` at `state[prefix + ".weight"]` etc.; training mode updates `state`.

    Like PyTorch, training normalises with the biased batch variance and moves the running
    variance towards the unbiased one.
    """

    def __init__(self, state, prefix, training):
        self.state, self.prefix, self.training = state, prefix, training

    def __call__(self, x):
        p = self.prefix
        if self.training:
            mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
            n = x.size // x.shape[1]
            for key, value in (("running_mean", mean), ("running_var", var * n / (n - 1))):
                old = self.state[f"{p}.{key}"]
                self.state[f"{p}.{key}"] = (1 - MOMENTUM) * old + MOMENTUM * value
        else:
            mean, var = self.state[f"{p}.running_mean"], self.state[f"{p}.running_var"]
        x = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + EPSILON)
        return x * self.state[f"{p}.weight"][:, None, None] + self.state[f"{p}.bias"][:, None, None]


def conv1x1(state, prefix, x, mode, stride, training):
    """Their `conv1x1`: a series adapter `x + conv1x1(BN(x))` or a parallel 1x1 conv."""
    if mode == "series_adapters":
        y = BatchNorm2d(state, f"{prefix}.conv.0", training)(x)
        return conv2d(y, state[f"{prefix}.conv.1.weight"]) + x
    return conv2d(x, state[f"{prefix}.conv.weight"], stride)


def conv_task(state, prefix, x, task, mode, stride, training):
    """Their `conv_task` (with `is_proj=1`, as `proj='11'`, and no dropout)."""
    y = conv2d(x, state[f"{prefix}.conv.weight"], stride, padding=1)
    if mode == "series_adapters":
        y = conv1x1(state, f"{prefix}.bns.{task}.0", y, mode, 1, training)
        return BatchNorm2d(state, f"{prefix}.bns.{task}.1", training)(y)
    if mode == "parallel_adapters":
        y = y + conv1x1(state, f"{prefix}.parallel_conv.{task}", x, mode, stride, training)
    return BatchNorm2d(state, f"{prefix}.bns.{task}", training)(y)


def basic_block(state, prefix, x, task, mode, stride, shortcut, training):
    """Their `BasicBlock`: conv1, then `conv2 = Sequential(ReLU, conv_task)`, shortcut, ReLU."""
    y = conv_task(state, f"{prefix}.conv1", x, task, mode, stride, training)
    y = conv_task(state, f"{prefix}.conv2.1", np.maximum(y, 0), task, mode, 1, training)
    residual = x
    if shortcut:
        n, c, h, w = x.shape
        residual = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
        residual = residual.mean(axis=(3, 5))  # nn.AvgPool2d(2): floor
        zeros = np.zeros((n, y.shape[1] - c, h // 2, w // 2))  # theirs: residual * 0
        residual = np.concatenate([residual, zeros], axis=1)
    return np.maximum(y + residual, 0)


def forward(state, images, task, adapter, training=False):
    """Their `ResNet.forward` for `config_task.task = task`: logits `(N, num_classes[task])`.

    Args:
        state: their state dict as NumPy arrays (updated in place in training mode).
        images: `(N, H, W, 3)` channels-last images (transposed to NCHW here).
        task: the domain index.
        adapter: `None`, `"parallel"` or `"series"` (`config_task.mode`).
        training: `net.train()` (batch statistics, running averages updated).
    """
    mode = MODES[adapter]
    x = np.transpose(np.asarray(images, np.float64), (0, 3, 1, 2))
    x = conv_task(state, "pre_layers_conv", x, task, mode, 1, training)
    for stage in (1, 2, 3):
        for block in range(4):
            # `_make_layer`: stride 2 in each stage's first block, which so has the shortcut.
            first = block == 0
            x = basic_block(state, f"layer{stage}.{block}", x, task, mode, 2 if first else 1,
                            first, training)
    x = np.maximum(BatchNorm2d(state, f"end_bns.{task}.0", training)(x), 0)
    x = x.mean(axis=(2, 3))  # nn.AdaptiveAvgPool2d(1), view
    return x @ state[f"linears.{task}.weight"].T + state[f"linears.{task}.bias"]


# === Their state dict from a keras_mdn.models.resnet26 model ===


def authors_state_dict(model, adapter):
    """The parameters of a Keras `resnet26` model under the authors' names and layouts."""
    from keras import ops

    def numpy(x):
        return np.asarray(ops.convert_to_numpy(x), np.float64)

    layer = model.get_layer
    state = {}

    def put_bn(prefix, bn, d):
        for key, weight in (("weight", bn.gamma), ("bias", bn.beta),
                            ("running_mean", bn.moving_mean),
                            ("running_var", bn.moving_variance)):
            state[f"{prefix}.{key}"] = numpy(weight)[d]

    def put_conv_task(prefix, name, bn_name):
        conv = layer(name)
        kernel = conv.layer.kernel if adapter else conv.kernel
        state[f"{prefix}.conv.weight"] = numpy(kernel).transpose(3, 2, 0, 1)
        for d in range(layer("head").num_domains):
            if adapter == "parallel":
                matrix = numpy(conv.adapter_matrix(d)).T
                state[f"{prefix}.parallel_conv.{d}.conv.weight"] = matrix[:, :, None, None]
            if adapter == "series":
                matrix = numpy(conv.adapter_matrix(d)).T
                put_bn(f"{prefix}.bns.{d}.0.conv.0", conv.adapter_norm, d)
                state[f"{prefix}.bns.{d}.0.conv.1.weight"] = matrix[:, :, None, None]
                put_bn(f"{prefix}.bns.{d}.1", layer(bn_name), d)
            else:
                put_bn(f"{prefix}.bns.{d}", layer(bn_name), d)

    put_conv_task("pre_layers_conv", "stem_conv", "stem_bn")
    for stage in (1, 2, 3):
        for block in range(4):
            keras_prefix = f"stage{stage}_block{block + 1}"
            prefix = f"layer{stage}.{block}"
            put_conv_task(f"{prefix}.conv1", f"{keras_prefix}_conv1", f"{keras_prefix}_bn1")
            put_conv_task(f"{prefix}.conv2.1", f"{keras_prefix}_conv2", f"{keras_prefix}_bn2")
    head = layer("head")
    for d in range(head.num_domains):
        put_bn(f"end_bns.{d}.0", layer("final_bn"), d)
        kernel, bias = head.domain_weights(d)
        state[f"linears.{d}.weight"] = numpy(kernel).T
        state[f"linears.{d}.bias"] = numpy(bias)
    return state
