"""archcalc: a CNN architecture calculator and profiler."""

__version__ = "0.1.0"
