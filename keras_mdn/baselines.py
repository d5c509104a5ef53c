"""Fine-tuning baselines: one network per domain, trained from one shared start, in one model.

The Visual Decathlon scores a multi-domain network against fine-tuning: one copy of the
pretrained network per domain, every weight trained on that domain alone. Built as separate
Keras models, each copy traces and compiles its own training step, which on small data costs
more than its training. A multi-domain model in which every weight is trainable and each domain
reads only the shared weights and its own rows (`keras_mdn.models.resnet26(num_classes,
adapter=None)` after `keras_mdn.surgery.transfer_weights`) holds each of those networks in turn:
`fine_tune_each_domain` trains it on one domain at a time, each time from the same weights and
optimizer state, so one compiled step serves every domain.
"""

from keras import ops

from keras_mdn.scoring import domain_accuracies


def fine_tune_each_domain(model, data, epochs, batch_size=32, domains=None, split="test",
                          callbacks=None, verbose="auto", **dataset_kwargs):
    """Fine-tunes `model` on each domain alone, from the same start, and scores each.

    Before each domain, the model's weights (moving statistics included) and its optimizer's
    state (step count, momenta) go back to their values at the call; the model then trains
    on that domain's batches alone (`data.dataset("train", domains=[d], ...)`) and is scored
    on `split`. A domain's batches change only the shared weights and that domain's rows (the
    keras_mdn layers' routing), so domain `d`'s scores are those of an independent network
    fine-tuned on `d` from the model's start, up to the order of the data. One traced
    training step serves every domain. The model is left as it was given.

    Args:
        model: a compiled multi-domain model with inputs `"image"` and `"domain"` (every
            weight a fine-tuned network trains must be trainable).
        data: a `keras_mdn.datasets.MultiDomainData`.
        epochs: int, epochs of each domain's training.
        batch_size: int, examples per batch. Defaults to 32.
        domains: names or ids of the domains to fine-tune. Defaults to all.
        split: the split that scores each domain (`keras_mdn.domain_accuracies`). Defaults
            to `"test"`.
        callbacks: Keras callbacks of each domain's `fit` (`on_train_end` sees the domain's
            fine-tuned weights). Defaults to `None`.
        verbose: `fit`'s verbosity. Defaults to `"auto"`.
        **dataset_kwargs: more arguments of `data.dataset` (`seed`, `training_augmentation`,
            `batching`, `drop_remainder`).

    Returns:
        Dict mapping each domain name to its fine-tuned network's accuracy on `split`: the
        `baseline` of `keras_mdn.decathlon_score`.

    Example:

    >>> model = resnet26(data.num_classes, adapter=None, input_shape=data.image_shape)
    >>> transfer_weights(pretrained, model, source_domain=0)
    >>> model.compile(keras.optimizers.SGD(0.02, momentum=0.9), loss, metrics)
    >>> baseline = fine_tune_each_domain(model, data, epochs=6, batch_size=64)
    """
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError(
            f"`model` must be compiled (its optimizer and loss train each domain). "
            f"Received: model={getattr(model, 'name', model)!r}, which is not compiled."
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be a positive int. Received: epochs={epochs!r}")
    ids = range(data.num_domains) if domains is None else [
        data.domain_index(d) for d in ([domains] if isinstance(domains, (str, int)) else domains)
    ]
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    state = [ops.convert_to_numpy(v) for v in optimizer.variables]

    def restart():
        model.set_weights(weights)
        for variable, value in zip(optimizer.variables, state):
            variable.assign(value)

    accuracies = {}
    try:
        for d in ids:
            restart()
            train = data.dataset("train", domains=[d], batch_size=batch_size, repeat=True,
                                 **dataset_kwargs)
            steps = data.steps_per_epoch(
                "train", batch_size=batch_size, domains=[d],
                **{k: v for k, v in dataset_kwargs.items() if k in ("batching", "drop_remainder")},
            )
            model.fit(train, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks,
                      verbose=verbose)
            accuracies.update(domain_accuracies(model, data, split, domains=[d]))
    finally:
        restart()
    return accuracies
