"""The ``fmq-loader`` command line: one subparser per subcommand (make-dataset, ...).

Each subcommand is a ``_cmd_<name>(args) -> int`` registered in ``_build_parser``. A user
mistake (bad argument value, unwritable folder) prints one ``fmq-loader: error: ...`` line
on stderr and exits with 2, without a traceback; ``--help`` on each subcommand documents it.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]

PROG = "fmq-loader"


class UsageError(Exception):
    """A mistake in the command line; reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse without the usage dump: a mistake is one line, pointing at --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _parse_size(text: str) -> tuple[int, int]:
    """'500x375' -> (500, 375)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"size must be WIDTHxHEIGHT, got {text!r}; e.g. --size 500x375")
    return int(parts[0]), int(parts[1])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from fmq_loader.synth import make_dataset

    try:
        root = make_dataset(args.dir, classes=args.classes, per_class=args.per_class,
                            size=args.size, seed=args.seed, quality=args.quality,
                            progress=not args.no_progress)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot write dataset to {args.dir!r}: {exc.strerror or exc}; "
                         "choose a writable folder") from exc
    total = args.classes * args.per_class
    print(f"wrote {total} images ({args.classes} classes x {args.per_class}, "
          f"{args.size[0]}x{args.size[1]}) to {root}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="fmq_loader: a fast drop-in torch DataLoader.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "make-dataset", help="write a synthetic ImageFolder of photo-like JPEGs",
        description="Write DIR/class_000/img_00000.jpg ...: JPEGs that compress like photos "
                    "(smooth structure plus noise), for tests, examples and benchmarks.")
    p.add_argument("dir", metavar="DIR", help="folder to create (existing files are overwritten)")
    p.add_argument("--classes", type=_positive_int, default=10, metavar="N",
                   help="number of class folders (default 10)")
    p.add_argument("--per-class", type=_positive_int, default=100, metavar="M",
                   help="images per class (default 100)")
    p.add_argument("--size", type=_parse_size, default=(500, 375), metavar="WxH",
                   help="image width x height in pixels (default 500x375)")
    p.add_argument("--seed", type=int, default=0, help="images depend only on the seed (default 0)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95 (default 90)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_make_dataset)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        the exit code: 0 on success, 2 on a usage error.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or --help
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
