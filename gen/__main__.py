"""``python -m gen``: emit Verilog and manifest.json for every LightNorm unit.

Subcommands ``area`` and ``bitstream`` are dispatched to ``gen.area.main`` and
``gen.bitstream.main``. Errors are one line on stderr and exit status 2, with nothing written. The
argument parsing shared with the subcommands is in ``gen.cli``.
"""

import sys

from gen import area, bitstream
from gen.cli import Parser, add_param_arguments, params_from_args
from gen.units import ParamError, generate

SUBCOMMANDS = {"area": area.main, "bitstream": bitstream.main}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    parser = Parser(
        prog="python -m gen",
        description="Emit synthesizable Verilog for LightNorm batch normalization units plus manifest.json "
                    "(ports, formats, parameters, latency). Other commands: 'python -m gen area --help', "
                    "'python -m gen bitstream --help'.")
    add_param_arguments(parser)
    parser.add_argument("--out", default="out",
                        help="output directory (default ./out); written atomically: a temporary directory "
                             "beside it is moved into place at the end")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument("--list-units", action="store_true",
                        help="print the unit registry (gen.registry: every unit, its kind, the tools "
                             "that apply to it, its bench and board attachments) and exit")
    args = parser.parse_args(argv)
    if args.list_units:
        from gen.registry import describe
        print("\n".join(describe()))
        return 0
    try:
        params = params_from_args(args)
        progress = None if args.quiet else (lambda name: print(f"gen: {name}", file=sys.stderr))
        manifest = generate(params, args.out, progress=progress)
    except ParamError as exc:
        parser.error(str(exc))
    if not args.quiet:
        print(f"gen: wrote {len(manifest['modules'])} modules and manifest.json to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
