"""ResNet-26 of the residual adapters paper, as a multi-domain Keras functional model."""

import keras

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead, check_num_classes
from keras_mdn.layers.domain_layer import domain_input
from keras_mdn.layers.residual_adapter import MODES, ResidualAdapter

STEM_WIDTH = 32
STAGE_WIDTHS = (64, 128, 256)
BLOCKS_PER_STAGE = 4
# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here), as in the authors' code.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def resnet26(
    num_classes,
    adapter=None,
    num_domains=None,
    input_shape=(64, 64, 3),
    width_factor=1.0,
    rank=None,
    adapter_regularizer=None,
    freeze_shared=False,
    adapter_dropout=0.0,
    name="resnet26",
):
    """The ResNet-26 of Rebuffi et al. (2017, 2018) with per-domain batch norms and heads.

    The architecture of the authors' code (srebuffi/residual_adapters, models.py):

    - stem: 3x3 conv `3 -> int(32 w)` (stride 1) and a per-domain BN (no ReLU, as in their
      code);
    - three stages of 4 BasicBlocks of widths `int(64 w)`, `int(128 w)`, `int(256 w)`, the
      first block of each stage with stride 2; a block is
      `conv3x3 -> BN_t -> ReLU -> conv3x3 -> BN_t`, plus the shortcut, then ReLU. The shortcut
      of a first block is parameter-free: a 2x2 average pool, then zero channels up to the
      block's width;
    - a per-domain BN + ReLU, global average pooling, and a per-domain linear head
      (`DomainHead`).

    Every 3x3 conv is shared by all domains, has no bias (a BN follows) and pads its input
    with one zero on every side, as PyTorch's `padding=1` does: a stride-2 conv is a
    `ZeroPadding2D(1)` then a `"valid"` conv (Keras' `"same"` would pad 0 before and 1 after
    and centre its windows on the odd inputs), so output `i` and a parallel adapter read
    input `2 i` as in the authors' code, and their weights give their logits. With
    `adapter` set, each of the 25 convs is a `ResidualAdapter` (the stem too, as in the
    authors' code); a series adapter's own batch norm uses their settings (epsilon `1e-5`,
    momentum `0.9`) like every other BN here. `adapter=None` is the "BN only" baseline:
    shared convs, per-domain BNs and heads. Convs are initialised as in the authors' code (He
    normal, fan-out); adapters start at zero (`ResidualAdapter`'s default), so every domain
    starts as the shared network.

    Widths are rounded as in the authors' code. Where `int(64 w) != 2 int(32 w)` (e.g.
    `w = 0.3`: 9, 19, 38, 76 channels) their shortcut, which concatenates as many zeros as
    it has channels, fails to add; here the shortcut pads the missing zero channels instead.
    At every width factor their code runs with, the two networks are the same.

    Parameter counts at `width_factor=1`:

    | part                                        | parameters |
    |---------------------------------------------|-----------:|
    | shared 3x3 conv weights                     |  5,806,944 |
    | parallel 1x1 adapters, per domain           |    645,216 |
    | series 1x1 adapters, per domain             |    689,152 |
    | series adapters' own BN (gamma, beta), per domain |  7,232 |
    | per-domain BN gamma and beta, per domain    |      7,744 |
    | per-domain BN moving statistics, per domain |      7,744 |
    | head, per domain                            | 257 x classes |

    The parallel adapters of one domain are 11.1 % of the shared conv weights. (The series
    adapters' BN also keeps 7,232 moving statistics per domain.)

    Layer names are stable and are the keys users see: `"stem_conv"`, `"stem_bn"`,
    `"stage{s}_block{b}_conv{1,2}"` (a `Conv2D`, or a `ResidualAdapter` wrapping a `Conv2D`
    of the same name), `"stage{s}_block1_pad1"` (the stride-2 conv's padding),
    `"stage{s}_block{b}_bn{1,2}"`, `"stage{s}_block{b}_relu1"`,
    `"stage{s}_block{b}_add"`, `"stage{s}_block{b}_out"`, `"final_bn"`, `"final_relu"`,
    `"pool"`, `"head"`, with `s` in 1..3 and `b` in 1..4.

    Args:
        num_classes: list of ints, the number of classes of each domain, or one int shared by
            all domains (then `num_domains` is required).
        adapter: `None`, `"parallel"` or `"series"`. Defaults to `None`.
        num_domains: int; inferred from a list `num_classes`. Defaults to `None`.
        input_shape: `(height, width, channels)` of the images, static. Defaults to
            `(64, 64, 3)`.
        width_factor: float, multiplies the widths: the stem has `int(32 * width_factor)`
            channels and the stages `int(64 * width_factor)`, `int(128 * width_factor)` and
            `int(256 * width_factor)`. Defaults to `1.0`.
        rank: optional int, low-rank adapters (`ResidualAdapter(rank=...)`), capped by each
            layer's channel counts. Defaults to `None` (full 1x1 adapters).
        adapter_regularizer: regularizer of the adapter kernels (the paper's separate adapter
            weight decay). Defaults to `None`.
        freeze_shared: bool, make the shared 3x3 convs non-trainable (learning new domains on
            a pretrained network). Defaults to `False`.
        adapter_dropout: float, or a pair `(rate_first, rate_second)`: the parallel
            adapters' channel-wise dropout in training (`ResidualAdapter(dropout=...)`), as the
            authors' `isdropout1` / `isdropout2` (rate 0.5 there): `rate_first` for the stem
            conv and the first conv of each block, `rate_second` for the second; one float
            sets both. Parallel adapters only. Defaults to `0.0`.
        name: model name. Defaults to `"resnet26"`.

    Returns:
        A `keras.Model` with inputs `"image"` `(batch, *input_shape)` and `"domain"`
        `(batch,)` float32 (`keras_mdn.domain_input`: a fractional id reaches the layers,
        which make its outputs NaN, instead of being truncated by Keras' input cast; int ids
        are cast exactly), and output the logits `(batch, max(num_classes))` of each
        example's domain (see `DomainHead`).

    Example:

    >>> model = resnet26([10, 100, 2], adapter="parallel")
    >>> logits = model({"image": images, "domain": domains})

    Reference:
        Rebuffi, Bilen, Vedaldi, "Efficient parametrization of multi-domain deep neural
        networks", CVPR 2018. https://arxiv.org/abs/1803.10082
    """
    num_classes = check_num_classes(num_classes, num_domains)
    num_domains = len(num_classes)
    if adapter is not None and adapter not in MODES:
        raise ValueError(f"`adapter` must be None or one of {MODES}. Received: adapter={adapter!r}")
    input_shape = _check_shapes(input_shape, width_factor)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"`rank` must be a positive int or None. Received: rank={rank!r}")
    dropout = _check_adapter_dropout(adapter_dropout, adapter)

    image = keras.Input(shape=input_shape, name="image")
    domain = domain_input()
    logits = _network(image, domain, num_classes, width_factor, adapter, rank,
                      adapter_regularizer, freeze_shared, dropout)
    return keras.Model([image, domain], logits, name=name)


def plain_resnet26(num_classes, input_shape=(64, 64, 3), width_factor=1.0, name="resnet26"):
    """The same ResNet-26 for one domain, from plain Keras layers: no domain input.

    `Conv2D`, `BatchNormalization` and a `Dense` head, with `resnet26`'s layer names,
    initialisers and batch-norm settings: the network one pretrains on a source domain and
    the "fine-tuning" baseline (one whole network per domain). `keras_mdn.surgery.
    transfer_weights(plain, multi_domain_model)` copies it into a `resnet26` by layer name
    (every domain's batch norms start from its statistics). As a plain Keras network it
    traces and runs at Keras' own speed.

    Args:
        num_classes: int, the number of classes.
        input_shape: `(height, width, channels)` of the images, static. Defaults to
            `(64, 64, 3)`.
        width_factor: float, as in `resnet26`. Defaults to `1.0`.
        name: model name. Defaults to `"resnet26"`.

    Returns:
        A `keras.Model` with input `"image"` and output the logits `(batch, num_classes)`.

    Example:

    >>> pretrained = plain_resnet26(10, input_shape=(32, 32, 3), width_factor=0.25)
    >>> pretrained.compile(...); pretrained.fit(source_images, source_labels)
    >>> model = resnet26([10, 5, 20], adapter="parallel", input_shape=(32, 32, 3),
    ...                  width_factor=0.25, freeze_shared=True)
    >>> transfer_weights(pretrained, model, source_domain=0)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive int. Received: num_classes={num_classes!r}"
        )
    input_shape = _check_shapes(input_shape, width_factor)
    image = keras.Input(shape=input_shape, name="image")
    logits = _network(image, None, [num_classes], width_factor)
    return keras.Model(image, logits, name=name)


def _network(image, domain, num_classes, width_factor, adapter=None, rank=None,
             adapter_regularizer=None, freeze_shared=False, dropout=(0.0, 0.0)):
    """The ResNet-26 graph on `image`: multi-domain, or plain Keras layers with `domain=None`."""
    num_domains = len(num_classes)
    stem_width = int(STEM_WIDTH * width_factor)

    def conv_unit(x, filters, strides, prefix, index):
        """`BN_t(conv3x3(x) [+ adapter])`: the authors' `conv_task`."""
        conv_name = f"{prefix}_conv{index}"
        if strides != 1:
            x = keras.layers.ZeroPadding2D(1, name=f"{prefix}_pad{index}")(x)
        conv = keras.layers.Conv2D(
            filters,
            3,
            strides=strides,
            padding="same" if strides == 1 else "valid",
            use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(
                2.0, mode="fan_out", distribution="untruncated_normal"
            ),
            name=conv_name,
        )
        if adapter is None:
            conv.trainable = not freeze_shared
            x = conv(x)
        else:
            in_channels = x.shape[-1]
            channels = in_channels if adapter == "parallel" else filters
            layer_rank = None if rank is None else min(rank, channels)
            x = ResidualAdapter(
                conv,
                num_domains,
                mode=adapter,
                rank=layer_rank,
                adapter_regularizer=adapter_regularizer,
                freeze_base=freeze_shared,
                norm_epsilon=BN_EPSILON,
                norm_momentum=BN_MOMENTUM,
                # The authors' `second`: the block's second conv; the stem counts as a first.
                dropout=dropout[1] if index == 2 else dropout[0],
                name=conv_name,
            )(x, domain)
        return batch_norm(x, f"{prefix}_bn{index}")

    def batch_norm(x, name):
        if domain is None:
            return keras.layers.BatchNormalization(
                momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
            )(x)
        return _domain_bn(num_domains, name)(x, domain)

    x = conv_unit(image, stem_width, 1, "stem", "")
    for stage, base_width in enumerate(STAGE_WIDTHS, start=1):
        width = int(base_width * width_factor)
        for block in range(1, BLOCKS_PER_STAGE + 1):
            prefix = f"stage{stage}_block{block}"
            strides = 2 if block == 1 else 1
            y = conv_unit(x, width, strides, prefix, 1)
            y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
            y = conv_unit(y, width, 1, prefix, 2)
            shortcut = x if block > 1 else _zero_padded_shortcut(x, width, prefix)
            y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
            x = keras.layers.ReLU(name=f"{prefix}_out")(y)
    x = batch_norm(x, "final_bn")
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if domain is None:
        return keras.layers.Dense(num_classes[0], name="head")(x)
    return DomainHead(num_classes, name="head")(x, domain)




def _check_adapter_dropout(adapter_dropout, adapter):
    """`(rate_first, rate_second)` from a rate or a pair; nonzero only with parallel adapters."""
    rates = adapter_dropout
    if not isinstance(rates, (tuple, list)):
        rates = (rates, rates)
    valid = len(rates) == 2 and all(
        not isinstance(rate, bool) and isinstance(rate, (int, float)) and 0 <= rate < 1
        for rate in rates
    )
    if not valid:
        raise ValueError(
            "`adapter_dropout` must be a rate in [0, 1) or a pair (rate_first, rate_second) of "
            f"them. Received: adapter_dropout={adapter_dropout!r}"
        )
    if any(rates) and adapter != "parallel":
        raise ValueError(
            "`adapter_dropout` applies to parallel adapters only (the authors' dropout is on "
            f"the parallel adapter's input). Received: adapter_dropout={adapter_dropout!r} "
            f"with adapter={adapter!r}"
        )
    return tuple(float(rate) for rate in rates)


def _check_shapes(input_shape, width_factor):
    """Validates `input_shape` and `width_factor`; returns the shape as a tuple."""
    if isinstance(width_factor, bool) or not isinstance(width_factor, (int, float)):
        raise TypeError(f"`width_factor` must be a number. Received: width_factor={width_factor!r}")
    stem_width = int(STEM_WIDTH * width_factor)
    if stem_width < 1:
        raise ValueError(
            "`width_factor` must give at least one stem channel (int(32 * width_factor) >= 1). "
            f"Received: width_factor={width_factor}"
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(d is None or d < 1 for d in input_shape):
        raise ValueError(
            "`input_shape` must be a static (height, width, channels). "
            f"Received: input_shape={input_shape}"
        )
    return input_shape


def _domain_bn(num_domains, name):
    return DomainBatchNormalization(
        num_domains, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def _zero_padded_shortcut(x, width, prefix):
    """2x2 average pool, then zero channels up to `width`: the shortcut has no parameters.

    Built from core layers only, so a saved model loads without importing this module. The
    zero channels are a `ZeroPadding2D` told its input is channels-first: it then pads the
    last two axes, (width, channels), and only the channels by a nonzero amount. "same"
    pooling matches the stride-2 conv's `ceil(size / 2)` also for odd sizes (where the
    authors' floor pooling would not add to it).
    """
    pooled = keras.layers.AveragePooling2D(2, padding="same", name=f"{prefix}_shortcut_pool")(x)
    missing = width - x.shape[-1]
    return keras.layers.ZeroPadding2D(
        ((0, 0), (0, missing)), data_format="channels_first", name=f"{prefix}_shortcut"
    )(pooled)
