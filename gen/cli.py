"""Command-line pieces shared by every ``gen`` command (``python -m gen``, ``gen area``,
``gen bitstream``, ``gen.benchmark``): the parser whose errors are one line and exit status 2, and
the generator parameters as arguments.

Imports only ``gen.units``, so every command module can import it without import cycles.
"""

import argparse
import sys

from gen.units import LIMITS, STATS_MODES, Params

__all__ = ["Parser", "add_param_arguments", "params_from_args"]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2."""

    def error(self, message):
        # One line, exit 2 (argparse's own default prints the usage too).
        sys.stderr.write(f"gen: error: {message}\n")
        sys.exit(2)


def _integer(name):
    """An argparse type: an integer, or an error naming the value and the allowed range."""
    lo, hi = LIMITS[name]

    def convert(text):
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name.replace('_', '-')} must be an integer in {lo}..{hi}, not {text!r}") from None
    return convert


def _choice(name, allowed):
    """An argparse type: one of ``allowed``, or an error naming the value and the allowed words."""
    def convert(text):
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{name} must be one of {', '.join(allowed)}, not {text!r}")
        return text
    return convert


def add_param_arguments(parser):
    """The generator parameters, shared by every subcommand."""
    d = Params()
    lim = LIMITS
    parser.add_argument("--width", type=_integer("width"), default=d.width,
                        help=f"BFP element width W in bits, sign included ({lim['width'][0]}..{lim['width'][1]}; default {d.width})")
    parser.add_argument("--block", type=_integer("block"), default=d.block,
                        help=f"block size B: elements (channels) sharing one exponent ({lim['block'][0]}..{lim['block'][1]}; default {d.block})")
    parser.add_argument("--in-format", default=d.in_format,
                        help="input float format: fp10 (1-5-4), fp16, fp15 (1-6-8), e4m3, e5m2 or e<E>m<M> "
                             f"with E <= 6 (default {d.in_format}); the BFP shared exponent has the same field and bias")
    parser.add_argument("--chunks", type=_integer("chunks"), default=d.chunks,
                        help=f"largest K, chunks per channel for the range; a power of two ({lim['chunks'][0]}..{lim['chunks'][1]}; "
                             f"default {d.chunks}); the run-time K may be any power of two up to it")
    parser.add_argument("--channels", type=_integer("channels"), default=d.channels,
                        help=f"number of channels held on chip ({lim['channels'][0]}..{lim['channels'][1]}; default {d.channels})")
    parser.add_argument("--max-count", type=_integer("max_count"), default=d.max_count,
                        help=f"largest count per channel n (N*H*W) per batch; sizes the accumulators "
                             f"({lim['max_count'][0]}..{lim['max_count'][1]}; default {d.max_count})")
    parser.add_argument("--internal-frac-bits", type=_integer("internal_frac_bits"), default=None,
                        help="fraction bits of the internal per-channel float (mu, 1/sigma, a, b, gamma, beta; "
                             f"{lim['internal_frac_bits'][0]}..{lim['internal_frac_bits'][1]}; default min(23, width + 4))")
    parser.add_argument("--stats", type=_choice("stats", STATS_MODES), default=d.stats,
                        help="precision of the channel sums: exact (integers over the whole exponent range) or "
                             f"low (windowed accumulators, --stats-guard bits below the largest exponent; default {d.stats})")
    parser.add_argument("--stats-guard", type=_integer("stats_guard"), default=d.stats_guard,
                        help=f"guard bits G of the low statistics' windowed accumulators "
                             f"({lim['stats_guard'][0]}..{lim['stats_guard'][1]}; default {d.stats_guard}; ignored with --stats exact)")


def params_from_args(args):
    return Params(width=args.width, block=args.block, in_format=args.in_format, chunks=args.chunks,
                  channels=args.channels, max_count=args.max_count, internal_frac_bits=args.internal_frac_bits,
                  stats=args.stats, stats_guard=args.stats_guard)
