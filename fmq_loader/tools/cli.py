"""The ``fmq-loader`` command line: make-dataset, train, bench, tune, show-config, check-config, pack.

Each subcommand is a ``_cmd_<name>(args) -> int`` registered in ``_build_parser``. A user
mistake (bad argument value, unwritable folder) prints one ``fmq-loader: error: ...`` line
on stderr (check-config: one per bad file, then a count) and exits with 2, without a
traceback; ``--help`` on each subcommand documents it. A value a flag such as ``--steps``
sets is passed to load_config as a flag, so an error it causes names the flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .cli_common import (PROG, Parser, UsageError, add_config_args, data_flag, int_list, load,
                         loader_names, parse_size, positive_int)

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


def _dataset(cfg, progress: bool):
    from fmq_loader.tools.build import build_dataset, check_dataset_root

    root = cfg.dataset.root
    if check_dataset_root(cfg) == "generate":
        s = cfg.synth
        print(f"generating {s.classes * s.per_class} images ({s.classes} classes x "
              f"{s.per_class}, {s.size[0]}x{s.size[1]}) in {root} (dataset.generate_if_missing)",
              file=sys.stderr)
    return build_dataset(cfg, progress=progress)


def _describe(cfg, dataset) -> str:
    ld = cfg.loader
    shape = "?"
    if len(dataset):
        x = dataset[0][0]
        shape = "x".join(str(d) for d in getattr(x, "shape", ())) or type(x).__name__
    return (f"config {cfg.source}: {len(dataset)} images, {len(dataset.classes)} classes in "
            f"{dataset.root}; sample {shape}; batch_size {ld.batch_size}, "
            f"num_workers {ld.num_workers}")


def _make_loader(kind: str, cfg, dataset):
    from fmq_loader.tools.build import loader_from_config, torch_loader_from_config

    return (loader_from_config if kind == "fmq" else torch_loader_from_config)(dataset, cfg)


def _close(loader) -> None:
    close = getattr(loader, "close", None)
    if close is not None:
        close()


_LOADER_NAMES = {"fmq": "FMQLoader", "torch": "torch DataLoader"}


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from fmq_loader.tools.demo import train
    from fmq_loader.progress import Progress

    flags = data_flag(args)
    if args.steps is not None:
        flags["train.steps"] = (args.steps, f"--steps {args.steps}")
    cfg = load(args, flags)
    dataset = _dataset(cfg, progress=not args.no_progress)
    tc = cfg.train
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    print(_describe(cfg, dataset))
    threads = torch.get_num_threads()
    print(f"training SmallCNN for {tc.steps} steps on the CPU ({threads} torch "
          f"thread{'' if threads == 1 else 's'}); images/s and data wait exclude the first "
          f"{tc.warmup_steps} steps")
    kinds = ["fmq", "torch"] if args.loader == "both" else [args.loader]
    results = {}
    for kind in kinds:
        name = _LOADER_NAMES[kind]
        print(f"-- {name}")
        loader = _make_loader(kind, cfg, dataset)
        # tqdm's bar when installed; without it the step lines are the progress report
        bar = Progress(tc.steps, not args.no_progress, f"train {kind}", unit="step",
                       fallback=False)
        try:
            results[kind] = train(loader, len(dataset.classes), tc.steps, lr=tc.lr,
                                  momentum=tc.momentum, warmup_steps=tc.warmup_steps,
                                  log_every=tc.log_every, seed=cfg.synth.seed, log=bar.write,
                                  progress=lambda _: bar.update())
        finally:
            bar.close()
            _close(loader)
        r = results[kind]
        print(f"{name}: {r.images_per_s:.1f} images/s, data wait {100 * r.data_wait_share:.1f}% "
              f"of loop time, first batch {r.first_batch_s:.2f} s, loss {r.first_loss:.3f} -> "
              f"{r.final_loss:.3f} (first and last batch)")
    if len(results) == 2:
        print()
        print(f"{'loader':<18}{'images/s':>10}{'data wait':>11}{'first batch':>13}"
              f"{'last-batch loss':>17}")
        for kind, r in results.items():
            name = _LOADER_NAMES[kind]
            print(f"{name:<18}{r.images_per_s:>10.1f}{100 * r.data_wait_share:>10.1f}%"
                  f"{r.first_batch_s:>11.2f} s{r.final_loss:>17.3f}")
        ratio = results["fmq"].images_per_s / results["torch"].images_per_s
        print(f"FMQLoader / torch DataLoader: {ratio:.2f}x images/s")
    if args.json:
        print(json.dumps({k: r.as_dict() for k, r in results.items()}))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from fmq_loader.tools.demo import time_loader
    from fmq_loader.progress import Progress

    flags = data_flag(args)
    if args.batches is not None:
        flags["bench.batches"] = (args.batches, f"--batches {args.batches}")
    if args.plot is not None:
        from fmq_loader.tools.plot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            raise UsageError(str(exc)) from None
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise UsageError(f"--plot {args.plot!r}: folder {folder!r} does not exist; create "
                             "it or write the chart elsewhere")
    elif args.workers is not None:
        raise UsageError("--workers is for the --plot sweep; add --plot FILE.png, or set "
                         "one count with --set loader.num_workers=N")
    cfg = load(args, flags)
    dataset = _dataset(cfg, progress=not args.no_progress)
    n = cfg.bench.batches
    if args.plot is not None:
        return _bench_plot(args, cfg, dataset, n)
    if not args.json:
        print(_describe(cfg, dataset) + f"; {n} timed batches per loader")
    results = {}
    for kind in args.loaders:
        loader = _make_loader(kind, cfg, dataset)
        bar = Progress(n, not args.no_progress, f"bench {kind}", unit="batch")
        try:
            results[kind] = time_loader(loader, n, progress=lambda _: bar.update())
        finally:
            bar.close()
            _close(loader)
    ratio = (results["fmq"].images_per_s / results["torch"].images_per_s
             if {"fmq", "torch"} <= results.keys() and results["torch"].images_per_s else None)
    if args.json:
        ld = cfg.loader
        print(json.dumps({"config": cfg.source, "images": len(dataset), "root": dataset.root,
                          "batch_size": ld.batch_size, "num_workers": ld.num_workers,
                          "loaders": {k: r.as_dict() for k, r in results.items()},
                          "fmq_over_torch": ratio}, indent=2))
        return 0
    print(f"{'loader':<18}{'first batch':>13}{'images/s':>11}{'batches':>9}{'seconds':>9}")
    for kind, r in results.items():
        name = _LOADER_NAMES[kind]
        print(f"{name:<18}{r.first_batch_s:>11.3f} s{r.images_per_s:>11.1f}{r.batches:>9}"
              f"{r.seconds:>9.2f}")
    if ratio is not None:
        print(f"FMQLoader / torch DataLoader: {ratio:.2f}x images/s")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from fmq_loader.progress import Progress
    from fmq_loader.tools.tune import TuneError, tune

    if args.budget_s != args.budget_s or args.budget_s <= 0:
        raise UsageError(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
    if not 0 <= args.step_ms < args.budget_s * 50:
        raise UsageError(f"--step-ms must be >= 0 and under 1/20 of --budget-s, got "
                         f"{args.step_ms:g}; e.g. --step-ms 50 for a 50 ms training step")
    cfg = load(args, data_flag(args))
    if args.out is not None:
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise UsageError(f"--out {args.out!r}: folder {folder!r} does not exist; create it "
                             "or write the file elsewhere")
    dataset = _dataset(cfg, progress=not args.no_progress)
    if not args.json:
        print(_describe(cfg, dataset) + f"; tuning for up to {args.budget_s:g} s")
    bar = Progress(None, not args.no_progress and not args.json, "tune", unit="trial",
                   fallback=False)
    try:
        result = tune(cfg, budget_s=args.budget_s, workers=args.workers,
                      prefetch=args.prefetch, dataset=dataset, step_s=args.step_ms / 1e3,
                      progress=None if args.json else
                      (lambda line: (bar.write(line), bar.update())))
    except TuneError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        bar.close()
    if args.out is not None:
        try:
            with open(args.out, "w", encoding="utf-8") as fh:
                fh.write(result.to_yaml())
        except OSError as exc:
            raise UsageError(f"cannot write --out {args.out!r}: {exc.strerror or exc}; "
                             "choose a writable path") from exc
    if args.json:
        print(json.dumps(result.as_dict() | {"out": args.out}, indent=2))
        return 0
    b = result.best
    print()
    print(result.table())
    print()
    print(f"best: {b.setting()}: {b.images_per_s:.1f} images/s, "
          f"{b.images_per_s / result.baseline.images_per_s:.2f}x num_workers=1 "
          f"({len(result.trials)} trials, {result.spent_s:.0f} s)")
    print(f"bottleneck: {result.bottleneck}: {result.reason}")
    if args.out is not None:
        print(f"wrote {args.out}; use it with FMQLoader.from_config(dataset, {args.out!r}) "
              f"or fmq-loader train --config {args.out}")
    return 0


def _bench_plot(args: argparse.Namespace, cfg, dataset, n: int) -> int:
    """bench --plot: images/s for each loader at each --workers count, a table and a chart."""
    import platform

    import torch

    from fmq_loader.tools.plot import plot_workers
    from fmq_loader.tools.build import loader_from_config, torch_loader_from_config
    from fmq_loader.tools.demo import time_loader
    from fmq_loader.progress import Progress

    workers = args.workers or list(range(1, min(4, 2 * (os.cpu_count() or 1)) + 1))
    series: dict[str, dict[int, float]] = {_LOADER_NAMES[k]: {} for k in args.loaders}
    if not args.json:
        print(_describe(cfg, dataset) + f"; {n} timed batches per loader and worker count")
    bar = Progress(n * len(workers) * len(args.loaders), not args.no_progress, "bench --plot",
                   unit="batch")
    try:
        for w in workers:
            for kind in args.loaders:
                make = loader_from_config if kind == "fmq" else torch_loader_from_config
                loader = make(dataset, cfg, num_workers=w)
                try:
                    r = time_loader(loader, n, progress=lambda _: bar.update())
                finally:
                    _close(loader)
                series[_LOADER_NAMES[kind]][w] = r.images_per_s
    finally:
        bar.close()
    ld = cfg.loader
    note = (f"{os.cpu_count()} cores ({platform.machine()}), Python "
            f"{platform.python_version()}, torch {torch.__version__}; {len(dataset)} images, "
            f"batch {ld.batch_size}, {n} timed batches per point\n"
            f"fmq-loader bench -c {cfg.source} --plot FILE.png --workers "
            + ",".join(map(str, workers)))
    plot_workers(series, args.plot, title=f"images/s against num_workers ({cfg.source})",
                 note=note)
    if args.json:
        print(json.dumps({"config": cfg.source, "images": len(dataset), "plot": args.plot,
                          "images_per_s": {k: {str(w): v for w, v in s.items()}
                                           for k, s in series.items()}}, indent=2))
        return 0
    names = list(series)
    print(f"{'num_workers':>11}" + "".join(f"{name:>18}" for name in names))
    for w in workers:
        print(f"{w:>11}" + "".join(f"{series[name][w]:>18.1f}" for name in names))
    print(f"wrote {args.plot}")
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
    p.set_defaults(func=_cmd_train)

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
    p.set_defaults(func=_cmd_bench)

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
    p.set_defaults(func=_cmd_tune)

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

    add_pack_parser(sub)
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
