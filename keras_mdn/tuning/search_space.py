"""The search space: per group of layers, where adapters go, which kind, and their rank.

A `SearchSpace` is resolved against a base model (`resolve`) into groups of adaptable layers,
then asked for one trial's `Design` with KerasTuner hyperparameters (`define`). Per group:

- `"<group>/mode"`: `"none"` (the group stays shared: frozen convs and the pretrained batch
  norm statistics), `"bn"` (per-domain batch norms only), `"parallel"` or `"series"`
  (residual adapters and per-domain batch norms);
- `"<group>/rank"`, only inside `hp.conditional_scope` of an adapter mode: `"full"` or a rank
  such as `"8"` (low-rank adapters, capped at each layer's channels).

Per factorised layer (`FactorizedDense`, `FactorizedConv*`: `layer.factorized` is True), when
the space lists `factorizations`: `"<layer>/factorization"` (the kind) and
`"<layer>/factorization_rank"` (`"full"`, an int rank, or a float in (0, 1): the relative error
eps that chooses the ranks). The layer is re-factorised from its current per-domain kernels.

Optional global choices: `"learning_rate"` and `"adapter_weight_decay"`.
"""

import warnings

import numpy as np

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.surgery.adapters import adaptable
from keras_mdn.surgery.rebuild import graph_layers

MODES = ("none", "bn", "parallel", "series")
ADAPTER_MODES = ("parallel", "series")
FULL_RANK = "full"
GROUPINGS = ("depth", "stage", "layer")


class Design:
    """One trial's placement: the mode and adapter rank of every grouped layer.

    Attributes:
        group_modes: dict group -> mode.
        group_ranks: dict group -> rank (int) or None (full rank or no adapter).
        layer_modes: dict layer name -> mode; batch norms carry their group's mode.
        layer_ranks: dict layer name -> rank or None.
        learning_rate: float or None (the hypermodel's default).
        weight_decay: float or None (no adapter weight decay).
        factorizations: dict factorised layer name -> `(kind, rank, eps)` (rank and eps
            None for full rank).
    """

    def __init__(self, group_modes, group_ranks, groups, norms, learning_rate=None,
                 weight_decay=None, factorizations=None):
        self.group_modes = dict(group_modes)
        self.group_ranks = dict(group_ranks)
        self.layer_modes, self.layer_ranks = {}, {}
        for group, names in groups.items():
            for name in names:
                self.layer_modes[name] = self.group_modes[group]
                self.layer_ranks[name] = self.group_ranks[group]
        for name, group in norms.items():
            self.layer_modes[name] = self.group_modes[group]
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.factorizations = dict(factorizations or {})

    @classmethod
    def uniform(cls, resolved, mode, rank=None):
        """Every group of a `ResolvedSpace` in one mode (the paper's hand design:
        `Design.uniform(resolved, "parallel")`)."""
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        groups = resolved.groups
        return cls({g: mode for g in groups},
                   {g: rank if mode in ADAPTER_MODES else None for g in groups},
                   groups, resolved.norms)

    def __repr__(self):
        parts = [
            f"{group}={mode}" + (f"(r={rank})" if (rank := self.group_ranks[group]) else "")
            for group, mode in self.group_modes.items()
        ]
        return f"Design({', '.join(parts)})"


class ResolvedSpace:
    """A `SearchSpace` applied to one model.

    Attributes:
        groups: dict group -> list of adaptable layer names (graph order).
        norms: dict batch norm layer name -> group (the group of the nearest adaptable layer
            before it in graph order).
        channels: dict layer name -> `(input channels, output channels)`.
        ranks: dict group -> rank choices kept (strings, `"full"` first).
        pruned: list of `(group, rank, reason)` for rank choices removed.
        factorized: names of the factorised layers whose factorisation is searched.
    """

    def __init__(self, groups, norms, channels, ranks, pruned, factorized=()):
        self.factorized = list(factorized)
        self.groups = groups
        self.norms = norms
        self.channels = channels
        self.ranks = ranks
        self.pruned = pruned


class SearchSpace:
    """Which adapter placements, kinds and ranks a search tries.

    Args:
        groups: how adaptable layers (`Conv1D`, `Conv2D`, `Dense`; the classifier excluded)
            are grouped; each group takes one mode and rank per trial:
            `"depth"` (`num_groups` consecutive groups in graph order), `"stage"` (by layer
            name up to the first `_`: `stem`, `stage1`... for `resnet26`), `"layer"` (one
            group per layer), a dict group name -> list of layer names, or a function
            `layer -> group name or None` (None: the layer is not searched). Layers in no
            group keep the base's state (shared, per-domain batch norms). Defaults to
            `"depth"`.
        num_groups: int, the number of groups of `groups="depth"`. Defaults to 3.
        modes: modes each group may take, among `"none"`, `"bn"`, `"parallel"`,
            `"series"`. Defaults to all four.
        ranks: adapter ranks to try: `"full"` and/or positive ints. Defaults to `("full",)`.
        learning_rates: optional list of learning rates to search. Defaults to `None` (the
            hypermodel's `learning_rate`).
        weight_decays: optional list of adapter L2 weight decays to search (0 allowed).
            Defaults to `None` (no adapter weight decay).
        factorizations: optional list of factorisation kinds (`"laf"`, `"tucker"`, `"tt"`,
            ...) to search for every factorised layer of the model. Defaults to `None`
            (factorised layers kept as they are).
        factorization_ranks: ranks to search with `factorizations`: `"full"`, ints, or floats
            in (0, 1) (the relative error eps choosing the ranks). Defaults to `("full",)`.

    Example:

    >>> space = SearchSpace(groups="stage", modes=("bn", "parallel"), ranks=("full", 4))
    """

    def __init__(self, groups="depth", num_groups=3, modes=MODES, ranks=(FULL_RANK,),
                 learning_rates=None, weight_decays=None, factorizations=None,
                 factorization_ranks=(FULL_RANK,)):
        if isinstance(groups, str) and groups not in GROUPINGS:
            raise ValueError(
                f"`groups` must be one of {GROUPINGS}, a dict or a function. "
                f"Received: groups={groups!r}"
            )
        if not (isinstance(groups, (str, dict)) or callable(groups)):
            raise TypeError(
                f"`groups` must be one of {GROUPINGS}, a dict or a function. "
                f"Received: groups={groups!r}"
            )
        if isinstance(groups, dict) and (
            not groups or any(not isinstance(names, (list, tuple)) or not names
                              for names in groups.values())
        ):
            raise ValueError(
                "A `groups` dict maps each group name to a non-empty list of layer names. "
                f"Received: groups={groups!r}"
            )
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(
                f"`num_groups` must be a positive int. Received: num_groups={num_groups!r}"
            )
        modes = tuple(modes)
        if not modes:
            raise ValueError(
                "The search space is empty: `modes` lists no mode. Received: modes=()"
            )
        unknown = [m for m in modes if m not in MODES]
        if unknown or len(set(modes)) != len(modes):
            raise ValueError(
                f"`modes` must list distinct modes among {MODES}. Received: modes={modes!r}"
            )
        ranks = tuple(ranks)
        if not ranks:
            raise ValueError("The search space is empty: `ranks` lists no rank. Received: ranks=()")
        for rank in ranks:
            if rank != FULL_RANK and (
                isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1
            ):
                raise ValueError(
                    f"`ranks` must hold {FULL_RANK!r} and/or positive ints. "
                    f"Received: ranks={ranks!r}"
                )
        self.groups = groups
        self.num_groups = num_groups
        self.modes = modes
        self.ranks = tuple(FULL_RANK if r == FULL_RANK else int(r) for r in ranks)
        self.learning_rates = _check_values(learning_rates, "learning_rates", positive=True)
        self.weight_decays = _check_values(weight_decays, "weight_decays", positive=False)
        self.factorizations = _check_factorizations(factorizations)
        self.factorization_ranks = _check_factorization_ranks(factorization_ranks)

    # === Resolution against a model ===

    def resolve(self, model, candidates):
        """Groups `candidates` (the model's adaptable layers) and prunes useless ranks.

        Args:
            model: the multi-domain base (its graph order places the batch norms).
            candidates: the adaptable layers, in graph order.

        Returns:
            A `ResolvedSpace`.
        """
        groups = self._group(candidates)
        if not groups:
            raise ValueError(
                "The search space is empty: `groups` put none of the model's adaptable layers "
                f"in a group. Adaptable layers: {[layer.name for layer in candidates]}"
            )
        by_name = {layer.name: layer for layer in candidates}
        channels = {name: _channels(by_name[name]) for names in groups.values() for name in names}
        ranks, pruned = {}, []
        for group, names in groups.items():
            kept = []
            for rank in self.ranks:
                if rank == FULL_RANK:
                    kept.append(FULL_RANK)
                    continue
                widest = max(max(channels[name]) for name in names)
                if rank >= widest:
                    pruned.append((
                        group,
                        rank,
                        f"rank {rank} >= the channels of every layer of group {group!r} (at "
                        f"most {widest}): the adapters would be full rank",
                    ))
                else:
                    kept.append(str(rank))
            ranks[group] = kept or [FULL_RANK]
        for _, _, reason in pruned:
            warnings.warn(f"Rank choice pruned: {reason}", stacklevel=3)
        factorized = []
        if self.factorizations is not None:
            factorized = [layer.name for layer in graph_layers(model)
                          if getattr(layer, "factorized", False)]
            if not factorized:
                raise ValueError(
                    "`factorizations` is set but the model has no factorised layer "
                    f"(FactorizedDense, FactorizedConv*). Received: factorizations="
                    f"{list(self.factorizations)}"
                )
        return ResolvedSpace(groups, _norm_groups(model, groups), channels, ranks, pruned,
                             factorized)

    def _group(self, candidates):
        names = [layer.name for layer in candidates]
        if self.groups == "layer":
            return {name: [name] for name in names}
        if self.groups == "depth":
            count = min(self.num_groups, len(names))
            chunks = np.array_split(np.arange(len(names)), count)
            return {f"depth{i}": [names[j] for j in chunk] for i, chunk in enumerate(chunks)}
        if self.groups == "stage":
            groups = {}
            for name in names:
                groups.setdefault(name.split("_")[0], []).append(name)
            return groups
        if isinstance(self.groups, dict):
            missing = sorted({n for ns in self.groups.values() for n in ns} - set(names))
            if missing:
                raise ValueError(
                    f"`groups` names layers the model has no adaptable layer for: {missing}. "
                    f"The model's adaptable layers are {names}. Received: groups={self.groups!r}"
                )
            return {str(group): list(ns) for group, ns in self.groups.items()}
        groups = {}
        for layer in candidates:
            group = self.groups(layer)
            if group is not None:
                groups.setdefault(str(group), []).append(layer.name)
        return groups

    # === One trial ===

    def define(self, hp, resolved):
        """Declares this space's hyperparameters on `hp` and returns the trial's `Design`."""
        group_modes, group_ranks = {}, {}
        for group in resolved.groups:
            mode = hp.Choice(f"{group}/mode", list(self.modes))
            group_modes[group] = mode
            group_ranks[group] = None
            adapter_modes = [m for m in self.modes if m in ADAPTER_MODES]
            if adapter_modes:
                with hp.conditional_scope(f"{group}/mode", adapter_modes):
                    rank = hp.Choice(f"{group}/rank", resolved.ranks[group])
                if mode in ADAPTER_MODES and rank != FULL_RANK:
                    group_ranks[group] = int(rank)
        factorizations = {}
        for name in resolved.factorized:
            kind = hp.Choice(f"{name}/factorization", list(self.factorizations))
            value = hp.Choice(f"{name}/factorization_rank", list(self.factorization_ranks))
            rank = eps = None
            if value != FULL_RANK:
                number = float(value)
                rank, eps = (None, number) if number < 1 else (int(number), None)
            factorizations[name] = (kind, rank, eps)
        learning_rate = weight_decay = None
        if self.learning_rates is not None:
            learning_rate = hp.Choice("learning_rate", list(self.learning_rates))
        if self.weight_decays is not None:
            weight_decay = hp.Choice("adapter_weight_decay", list(self.weight_decays))
        return Design(group_modes, group_ranks, resolved.groups, resolved.norms,
                      learning_rate=learning_rate, weight_decay=weight_decay,
                      factorizations=factorizations)


def _check_values(values, name, positive):
    if values is None:
        return None
    values = tuple(values)
    if not values or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (positive and v == 0)
        for v in values
    ):
        raise ValueError(
            f"`{name}` must be None or a non-empty list of {'positive' if positive else '>= 0'} "
            f"numbers. Received: {name}={values!r}"
        )
    return tuple(float(v) for v in values)


def _check_factorizations(factorizations):
    if factorizations is None:
        return None
    from keras_mdn.factorizations import KINDS

    factorizations = tuple(factorizations)
    if not factorizations or any(k not in KINDS for k in factorizations):
        raise ValueError(
            f"`factorizations` must be None or a non-empty list of kinds among {sorted(KINDS)}. "
            f"Received: factorizations={factorizations!r}"
        )
    return factorizations


def _check_factorization_ranks(ranks):
    ranks = tuple(ranks)
    values = []
    for rank in ranks:
        if rank == FULL_RANK:
            values.append(FULL_RANK)
        elif isinstance(rank, (int, np.integer)) and not isinstance(rank, bool) and rank >= 1:
            values.append(str(int(rank)))
        elif isinstance(rank, float) and 0 < rank < 1:
            values.append(repr(rank))
        else:
            values = None
            break
    if not values:
        raise ValueError(
            f"`factorization_ranks` must hold {FULL_RANK!r}, positive ints or floats in (0, 1) "
            f"(eps). Received: factorization_ranks={ranks!r}"
        )
    return tuple(values)


def _channels(layer):
    out_channels = layer.filters if hasattr(layer, "filters") else layer.units
    return int(layer.input.shape[-1]), int(out_channels)


def _norm_groups(model, groups):
    """Each per-domain batch norm joins the group of the nearest adaptable layer before it."""
    group_of = {name: group for group, names in groups.items() for name in names}
    norms, current = {}, None
    for layer in graph_layers(model):
        if adaptable(layer):
            current = group_of.get(layer.name)
        elif isinstance(layer, DomainBatchNormalization) and current is not None:
            norms[layer.name] = current
    return norms
