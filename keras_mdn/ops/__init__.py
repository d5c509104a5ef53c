"""Backend-agnostic tensor math shared by layers, surgery, export and tuning."""

from keras_mdn.ops.routing import (
    canonicalize_domain,
    check_num_domains,
    gather_domain,
    is_uniform,
    route,
)

__all__ = [
    "canonicalize_domain",
    "check_num_domains",
    "gather_domain",
    "is_uniform",
    "route",
]
