"""Conventional float batch-norm baselines for the area comparison (issue 5).

The baselines themselves (``float_bn_{fwd,bwd}_<suffix>``) are entries of kind ``baseline`` in
``gen.registry.REGISTRY``, which applies them to ``area`` only, so ``python -m gen`` emits LightNorm
units only. A baseline takes
the LightNorm parameters that set its size and throughput (``block`` lanes per cycle,
``channels`` held on chip, ``max_count``); the element width and the input format of LightNorm do
not apply (its format is in the name).

``BASELINE_FORMATS`` (defined beside the units in ``gen.registry``, re-exported here): name suffix -> (compute format, per-element I/O format). ``fp32`` and
``bf16`` compute and store in one format; ``bf16_fp32`` is the usual mixed-precision BN: bf16
activations and gradients in and out, fp32 statistics, accumulation, parameters and per-channel
records (``hw.float_bn``, ``io_fmt``).
"""

__all__ = ["BASELINE_FORMATS", "BASELINE_LABELS", "baseline_names"]

from gen.registry import BASELINE_FORMATS, BASELINE_LABELS, names


def baseline_names():
    """The baselines' Verilog module names (their units are in ``gen.registry.REGISTRY``)."""
    return names(kind="baseline")
