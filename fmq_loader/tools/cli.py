"""The ``fmq-loader`` command line: make-dataset, train, bench, tune, show-config, check-config, pack, regrid.

Each subcommand is a ``_cmd_<name>(args) -> int`` registered in ``_build_parser``; those
that run loaders (train, bench, tune) are in cli_run.py, pack and regrid in cli_pack.py, and what they
share in cli_common.py. A user mistake (bad argument value, unwritable folder) prints one
``fmq-loader: error: ...`` line on stderr (check-config: one per bad file, then a count)
and exits with 2, without a traceback; ``--help`` on each subcommand documents it. A value
a flag such as ``--steps`` sets is passed to load_config as a flag, so an error it causes
names the flag.
"""

from __future__ import annotations

import argparse
import sys

from .cli_common import (PROG, Parser, UsageError, add_config_args, int_list, load, loader_names,
                         parse_size, positive_int)
from .cli_run import cmd_bench, cmd_train, cmd_tune

__all__ = ["main"]


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from fmq_loader.images.synth import make_dataset

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


def _cmd_show_config(args: argparse.Namespace) -> int:
    from fmq_loader.tools.config import dump_config

    cfg = load(args)
    print(f"# resolved from {cfg.source}" + (f" with --set {' '.join(args.overrides)}"
                                             if args.overrides else ""))
    print(dump_config(cfg, comments=not args.no_comments), end="")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    """Check every file, as train would read it; one line per file, exit 2 if any failed."""
    from fmq_loader.tools.build import check_dataset_root
    from fmq_loader.tools.config import load_config
    from fmq_loader.errors import ConfigError

    failed = 0
    for path in args.configs:
        try:
            cfg = load_config(path, args.overrides)
            action = check_dataset_root(cfg)
        except ConfigError as exc:
            failed += 1
            message = str(exc)
            if not message.startswith(path):  # e.g. a --set conflict: say which file
                message = f"{path}: {message}"
            print(f"{PROG}: error: {message}", file=sys.stderr)
            continue
        root = cfg.dataset.root
        note = (f"dataset.root {root} exists" if action == "exists"
                else f"dataset.root {root} will be generated")
        ld = cfg.loader
        print(f"{path}: ok (batch_size {ld.batch_size}, num_workers {ld.num_workers}, "
              f"{len(cfg.dataset.transforms)} transforms; {note})")
    if failed and len(args.configs) > 1:
        print(f"{PROG}: {failed} of {len(args.configs)} configs failed", file=sys.stderr)
    return 2 if failed else 0


def _build_parser() -> argparse.ArgumentParser:
    from fmq_loader._version import __version__

    parser = Parser(
        prog=PROG, description="fmq_loader: a fast drop-in torch DataLoader.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example (generates a small image folder on first use):\n"
               "  fmq-loader train --config configs/cpu_small.yaml --loader both\n"
               "\n"
               "Configs: see configs/ in the source tree (default.yaml lists every key with "
               "a comment)\nand `fmq-loader show-config`; more in README.md. Each command "
               "has its own --help.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "make-dataset", help="write a synthetic ImageFolder of photo-like JPEGs",
        description="Write DIR/class_000/img_00000.jpg ...: JPEGs that compress like photos "
                    "(smooth structure plus noise), for tests, examples and benchmarks.")
    p.add_argument("dir", metavar="DIR", help="folder to create (existing files are overwritten)")
    p.add_argument("--classes", type=positive_int, default=10, metavar="N",
                   help="number of class folders (default 10)")
    p.add_argument("--per-class", type=positive_int, default=100, metavar="M",
                   help="images per class (default 100)")
    p.add_argument("--size", type=parse_size, default=(500, 375), metavar="WxH",
                   help="image width x height in pixels (default 500x375)")
    p.add_argument("--seed", type=int, default=0, help="images depend only on the seed (default 0)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95 (default 90)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser(
        "train", help="train a small CNN on the CPU; report images/s and data-wait share",
        description="The demo: train SmallCNN for train.steps SGD steps on an ImageFolder "
                    "(generated first when dataset.generate_if_missing is true), printing the "
                    "loss, images/s, and the share of loop time spent waiting for data. "
                    "e.g. fmq-loader train --config configs/cpu_small.yaml --loader both")
    add_config_args(p)
    p.add_argument("--loader", choices=("fmq", "torch", "both"), default="fmq",
                   help="FMQLoader, torch DataLoader, or both one after the other with a "
                        "side-by-side table (default fmq)")
    p.add_argument("--steps", type=positive_int, metavar="N", help="sets train.steps")
    p.add_argument("--data", metavar="DIR", help="sets dataset.root")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (generating a folder, training steps)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "bench", help="FMQLoader vs torch DataLoader on a config: images/s, time to first batch",
        description="Iterate the config's dataset with each loader: time to the first batch "
                    "(worker start-up included), then images/s over bench.batches batches.")
    add_config_args(p)
    p.add_argument("--loaders", type=loader_names, default=["fmq", "torch"], metavar="LIST",
                   help="fmq, torch or fmq,torch (default fmq,torch)")
    p.add_argument("--batches", type=positive_int, metavar="N", help="sets bench.batches")
    p.add_argument("--data", metavar="DIR", help="sets dataset.root")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png",
                   help="sweep num_workers (--workers) for each loader and draw images/s "
                        "against num_workers as a PNG (needs matplotlib: pip install "
                        "\"fmq-loader[plot]\")")
    p.add_argument("--workers", type=int_list, metavar="LIST",
                   help="num_workers values for --plot (default 1,2,... up to 4, at most twice "
                        "the cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "tune", help="try num_workers and prefetch_factor on a config's dataset; name the "
                     "bottleneck; write the best settings",
        description="Within --budget-s seconds, measure images/s (median of windows, warm-up "
                    "excluded) for num_workers 1, 2, 3, 4, 6, ... up to twice the cores and "
                    "prefetch_factor 2 and 4, print a table, say whether loading is "
                    "decode-, I/O-, shared-memory- or consumer-bound, and write the best "
                    "settings as a config (--out). e.g. fmq-loader tune "
                    "configs/cpu_small.yaml --budget-s 60 --out best.yaml")
    add_config_args(p, positional=True)
    p.add_argument("--budget-s", type=float, default=60.0, metavar="S",
                   help="seconds for all trials together (default 60)")
    p.add_argument("--out", metavar="FILE.yaml",
                   help="write the config with the best settings here")
    p.add_argument("--workers", type=int_list, metavar="LIST",
                   help="num_workers values to try, e.g. 1,2,4 (default: 1, 2, 3, 4, 6, ... "
                        "up to twice the cores); 1 is always tried")
    p.add_argument("--prefetch", type=int_list, metavar="LIST",
                   help="prefetch_factor values, the first used for the worker sweep "
                        "(default: the config's, then 4 and 2)")
    p.add_argument("--step-ms", type=float, default=0.0, metavar="MS",
                   help="sleep this long per batch, standing in for your training step "
                        "(a GPU step leaves the CPU free); default 0: the loader alone")
    p.add_argument("--data", metavar="DIR", help="sets dataset.root")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "show-config", help="print the resolved config, defaults included",
        description="Print CONFIG merged with the defaults and --set overrides, as YAML that "
                    "load_config reads back; each key with a one-line comment.")
    add_config_args(p, positional=True)
    p.add_argument("--no-comments", action="store_true", help="omit the comments")
    p.set_defaults(func=_cmd_show_config)

    p = sub.add_parser(
        "check-config", help="validate config files; exit 2 if any is bad",
        description="Validate each CONFIG as train, bench and tune read it: keys, types, "
                    "ranges, transforms, and that dataset.root is set and is a folder, or "
                    "will be generated (dataset.generate_if_missing). Every file is checked; "
                    "each bad one gets an error line on stderr.")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML files")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one key (value parsed as YAML); repeatable")
    p.set_defaults(func=_cmd_check_config)

    from fmq_loader.tools.cli_pack import add_parser as add_pack_parser
    from fmq_loader.tools.cli_pack import add_regrid_parser

    add_pack_parser(sub)
    add_regrid_parser(sub)
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
    from fmq_loader.errors import ConfigError

    try:
        return int(args.func(args))
    except (UsageError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
