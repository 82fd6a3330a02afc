"""Every layer kind archcalc knows. Importing this package registers them all."""

from archcalc.core.kinds import (  # noqa: F401  (registration)
    activation,
    additive,
    byoa,
    conv,
    dense,
    effv2,
    extra,  # noqa: F401,E402  (registration; after activation, which it builds on)
    gcvit,
    linattn,
    mobilevit,
    modern,
    mqa,
    msra,
    norm,
    pool,
    pooled,
    resize,
    tokens,
    windows,
    xcit,
    yolo,
)
from archcalc.core.kinds.base import REGISTRY, Arg, Cost, Example, Kind, LayerError, RFStep, Saved, Shape, suggest_kind

__all__ = ["REGISTRY", "Arg", "Cost", "Example", "Kind", "LayerError", "RFStep", "Saved", "Shape", "suggest_kind"]
