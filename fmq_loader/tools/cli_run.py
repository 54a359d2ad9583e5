"""The ``fmq-loader`` subcommands that run loaders: train, bench (and its --plot sweep), tune.

Registered by cli.py's parser; each is a ``cmd_<name>(args) -> int``, as there. They
import what they run (torch, the loaders, the config) when called, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .cli_common import UsageError, data_flag, load

__all__ = ["cmd_train", "cmd_bench", "cmd_tune"]


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


def cmd_train(args: argparse.Namespace) -> int:
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


def cmd_bench(args: argparse.Namespace) -> int:
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


def cmd_tune(args: argparse.Namespace) -> int:
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
