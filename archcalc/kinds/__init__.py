"""Every layer kind archcalc knows. Importing this package registers them all."""

from archcalc.kinds import activation, conv, dense, norm, pool, resize  # noqa: F401  (registration)
from archcalc.kinds import extra  # noqa: F401,E402  (registration; after activation, which it builds on)
from archcalc.kinds.base import REGISTRY, Arg, Cost, Example, Kind, LayerError, RFStep, Saved, Shape

__all__ = ["REGISTRY", "Arg", "Cost", "Example", "Kind", "LayerError", "RFStep", "Saved", "Shape"]
