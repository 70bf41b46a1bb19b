"""Stream payload layouts shared by the Range-BN forward and backward cores, their benches and the
board top. One function per record; all sizes derive from ``gen.units.Params``-like arguments.

Stream protocol of both cores (see their docstrings for latency):

Forward core (``hw.forward_core.ForwardCore``)
    ``cmd``    in:  one record per pass (``cmd_layout``): count n, log2 K, C, training.
    ``x``      in:  BFP blocks (``bfp.block_layout()``). Training: the whole tensor twice, first
                    for the statistics pass, then again for the normalize pass. Inference: once.
    ``params`` in:  one ``params_layout`` record per channel, channel 0 first, consumed during finalize.
    ``stats``  out: one ``saved_layout`` record per channel, emitted during finalize: what the backward
                    core needs, plus the updated running statistics.
    ``y``      out: flagged BFP blocks, one per input block of the normalize pass.

Backward core (``hw.backward_core.BackwardCore``)
    ``cmd``    in:  one ``backward_cmd_layout`` record per pass.
    ``stats``  in:  the low bits of the forward core's ``saved_layout`` records
                    (``backward_saved_layout``, a prefix), channel 0 first.
    ``xg``     in:  ``pair_layout`` blocks (x and g of the same position) for the reduction pass.
    ``grads``  out: one ``grads_layout`` record per channel (dgamma, dbeta).
    ``g``      in:  g blocks again for the dx pass (not used in parameters-only mode).
    ``dx``     out: flagged BFP blocks.
"""

from amaranth.lib import data

from hw.formats import C_FRAC_BITS

__all__ = [
    "C_WIDTH", "count_width", "position_width", "chunks_log2_width",
    "cmd_layout", "backward_cmd_layout", "params_layout", "saved_layout", "backward_saved_layout",
    "grads_layout", "pair_layout",
]

#: Width of the fixed-point range constant C (unsigned, C_FRAC_BITS fraction bits, C < 4).
C_WIDTH = C_FRAC_BITS + 2


def count_width(max_count):
    return max_count.bit_length()


def position_width(max_count):
    return max(1, (max_count - 1).bit_length())


def chunks_log2_width(max_chunks):
    return max(1, (max_chunks.bit_length() - 1).bit_length())


def cmd_layout(max_count, max_chunks):
    """Forward pass command. ``count``: n, positions per channel; ``chunks_log2``: log2 K (K <= the
    generator's largest K); ``c_scale``: C from ``sim.model.golden_bn.range_scale(n // K, cfix)``;
    ``training``: 1 = batch statistics (two x passes), 0 = running statistics (one x pass)."""
    return data.StructLayout({
        "count": count_width(max_count),
        "chunks_log2": chunks_log2_width(max_chunks),
        "c_scale": C_WIDTH,
        "training": 1,
    })


def backward_cmd_layout(max_count, max_chunks):
    """Backward pass command; ``params_only`` = 1 skips the dx pass."""
    return data.StructLayout({
        "count": count_width(max_count),
        "chunks_log2": chunks_log2_width(max_chunks),
        "c_scale": C_WIDTH,
        "params_only": 1,
    })


def params_layout(internal):
    """Per-channel parameters, internal-float bits. With ``load_running`` set the channel's running
    statistics are replaced by ``running_mean`` / ``running_sigma`` before use."""
    return data.StructLayout({
        "gamma": internal.width,
        "beta": internal.width,
        "running_mean": internal.width,
        "running_sigma": internal.width,
        "load_running": 1,
    })


def backward_saved_layout(internal, max_count, max_chunks):
    """The part of the forward record the backward pass reads: the low bits of ``saved_layout``
    (a prefix with the same fields at the same offsets). The backward core's ``stats`` port takes
    exactly these bits, so the integrator connects the low ``backward_saved_layout(...).size``
    bits of each stored forward record."""
    return data.StructLayout({
        "mu": internal.width,
        "inv": internal.width,
        "a": internal.width,                             # 0 for a flat channel: dx = 0 follows
        "argmax": data.ArrayLayout(position_width(max_count), max_chunks),
        "argmin": data.ArrayLayout(position_width(max_count), max_chunks),
        "chunk_flat": data.ArrayLayout(1, max_chunks),   # that chunk's max == min: no correction
    })


def saved_layout(internal, max_count, max_chunks):
    """What the forward pass saves per channel (internal-float bits, positions, flags):
    :func:`backward_saved_layout` in the low bits, then what only the host reads."""
    fields = {name: field.shape for name, field in backward_saved_layout(internal, max_count, max_chunks)}
    fields.update({
        "flat": 1,                                       # R == 0 (docs/numerics.md)
        "sigma": internal.width,
        "b": internal.width,
        "running_mean": internal.width,
        "running_sigma": internal.width,
        "overflow": 1,                                   # an internal-float result saturated
    })
    return data.StructLayout(fields)


def grads_layout(internal):
    return data.StructLayout({
        "dgamma": internal.width,
        "dbeta": internal.width,
        "overflow": 1,
    })


def pair_layout(bfp):
    return data.StructLayout({
        "x": bfp.block_layout(),
        "g": bfp.block_layout(),
    })
