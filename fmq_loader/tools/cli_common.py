"""What the ``fmq-loader`` subcommand modules share: UsageError, the parser, argument types, config flags.

cli.py registers the subcommands; cli_pack.py (and the others) import this module, never
cli.py, so that no subcommand module imports the one that registers it.
"""

from __future__ import annotations

import argparse

__all__ = ["PROG", "UsageError", "Parser", "parse_size", "positive_int", "int_list",
           "loader_names", "add_config_args", "load", "data_flag"]

PROG = "fmq-loader"


class UsageError(Exception):
    """A mistake in the command line; reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse without the usage dump: a mistake is one line, pointing at --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def parse_size(text: str) -> tuple[int, int]:
    """'500x375' -> (500, 375)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"size must be WIDTHxHEIGHT, got {text!r}; e.g. --size 500x375")
    return int(parts[0]), int(parts[1])


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


# -- config-driven commands: the flags they share ----------------------------------------
def add_config_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("config", nargs="?", metavar="CONFIG",
                       help="YAML config (default: the built-in defaults)")
    else:
        p.add_argument("-c", "--config", metavar="CONFIG",
                       help="YAML config, e.g. configs/cpu_small.yaml (default: built-in "
                            "defaults, see `fmq-loader show-config`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one key, value parsed as YAML; repeatable, e.g. "
                        "--set loader.num_workers=4 --set dataset.on_error=skip")


def load(args: argparse.Namespace, flags: dict | None = None):
    """The config with the flags (dotted key -> (value, flag as typed)), then --set."""
    from fmq_loader.tools.config import load_config

    return load_config(args.config, args.overrides, flags=flags)


def data_flag(args: argparse.Namespace) -> dict:
    return {} if args.data is None else {"dataset.root": (args.data, f"--data {args.data}")}


def int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of ints >= 1, "
                                         f"got {text!r}; e.g. 1,2,4")
    return values


def loader_names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(n not in ("fmq", "torch") for n in names):
        raise argparse.ArgumentTypeError(f"must be fmq, torch or fmq,torch, got {text!r}")
    return names
