"""Loader benchmark: FMQLoader against torch DataLoader, same Dataset, same run.

Both loaders read the *same* user Dataset (``PlainJPEGDataset``: Pillow decode ->
random-resized-crop 224 -> flip -> uint8 CHW tensor, written the way a
torchvision user would, without fmq_loader's decoder), batch 64, 2 workers,
persistent workers, 2 epochs, on a generated image set (``--images-set``, default
``photo``: ~500x375 JPEGs calibrated to photos; ``photo-1600`` for 1600x1200 phone-size
photos, ``skimage`` for crops of real photographs; see bench/imagesets.py). The report
names the set, its files' size and bits per pixel.

Reported per loader (medians over ``--runs`` runs, alternating loaders):
images/s over both epochs; main-process CPU per batch (median and mean of the
process CPU time -- all threads -- spent inside ``next()``); ``next()`` latency
when a batch is already waiting; time to the first batch (from ``iter()``,
worker start included; per run the median of the run's own loader and
``FRESH_STARTS`` more new loaders, each iterated once and closed); epoch-2
start (time from the end of epoch 1 to the first batch of epoch 2: in this
decode-bound loop it depends on where the
pipeline is in its cycle); next-epoch start after slack (one more epoch with a
0.5 s training step before its last batch, then the time to the following
epoch's first batch: the cost of the boundary itself). Before each timed
``next()`` the loop computes for 0.5 s (a matmul loop: a stand-in for a
training step) so the prefetch is full: at batch 3 of each of the 2 epochs, and
in the probe epoch at batch 3 and every 8 batches after it while 4 or more
remain (batches 3 and 11 of the default 20), so the median has 4 samples per
run and is not half first-epoch start-up; images/s counts the 2 epochs only.

    python -m fmq_loader.bench loader [--quick] [--images N] [--runs R] [--json]
        [--fmq-pipeline imagefolder]   # FMQLoader + ImageFolder against DataLoader + the plain Dataset
        [--fmq-pipeline torchvision]   # a torchvision user's script, before and after the switch
        [--fmq-pipeline packed-jpeg]   # FMQLoader + PackedImages (fmq-loader pack, short side 256;
        [--fmq-pipeline packed-raw]    #   JPEG or raw records) against DataLoader + the plain Dataset
        [--plot FILE.png --workers 1,2,3,4]   # images/s against num_workers, both loaders, a chart
        [--regrid]                     # both loaders read a `fmq-loader regrid` copy of the set

A little over the ~400-line guide: one benchmark, its run and its table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from fmq_loader.bench.imagesets import IMAGE_SETS, describe, prepare

__all__ = ["PlainJPEGDataset", "main", "run", "sweep"]


class PlainJPEGDataset(torch.utils.data.Dataset):
    """Pillow decode -> RandomResizedCrop(224) -> flip -> uint8 CHW tensor (torchvision-style)."""

    def __init__(self, root: str, size: int = 224) -> None:
        self.paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                            if f.endswith(".jpg"))
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        w, h = img.size
        area = w * h
        for _ in range(10):
            target = area * random.uniform(0.08, 1.0)
            ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = random.randint(0, w - cw), random.randint(0, h - ch)
                break
        else:
            cw, ch, x, y = w, h, 0, 0
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(x, y, x + cw, y + ch))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous(), i % 10


def _train_step_for(seconds: float) -> None:
    """Keep this process busy, as a training step would (sleeping would idle the CPU)."""
    a = torch.ones(256, 256)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = (a @ a).clamp_(max=1.0)


FRESH_STARTS = 4  # extra time-to-first-batch samples per run, each from a new loader


def _cpu() -> float:
    return time.process_time()  # this process, all threads; children excluded


def _new_loader(kind: str, dataset, batch_size: int, num_workers: int, ctx: str, seed: int = 0):
    from fmq_loader import FMQLoader

    cls = FMQLoader if kind == "fmq" else torch.utils.data.DataLoader
    return cls(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
               persistent_workers=True, multiprocessing_context=ctx,
               generator=torch.Generator().manual_seed(seed))


def _fresh_first_batches(kind: str, dataset, batch_size: int, num_workers: int, ctx: str,
                         count: int) -> list[float]:
    """Seconds from ``iter()`` to the first batch of ``count`` new loaders (workers not
    started yet), one after another: more samples of the noisiest figure per run."""
    out = []
    for k in range(count):
        loader = _new_loader(kind, dataset, batch_size, num_workers, ctx, seed=k + 1)
        try:
            t0 = time.perf_counter()
            x, _ = next(iter(loader))
            out.append(time.perf_counter() - t0)
            del x
        finally:
            if kind == "fmq":
                loader.close()
        del loader  # DataLoader has no close(): its workers stop when it is collected
        gc.collect()
        time.sleep(0.2)  # the closed loader's workers are gone before the next one forks
    return out


def _one_run(kind: str, dataset, batch_size: int, num_workers: int, epochs: int, ctx: str,
             fresh_starts: int = FRESH_STARTS) -> dict:
    loader = _new_loader(kind, dataset, batch_size, num_workers, ctx)
    cpu_per_batch, ready_next, epoch_starts = [], [], []
    first_batch = None
    images = 0
    t_start = time.perf_counter()
    t_end_prev = None
    try:
        for epoch in range(epochs):
            t_iter = time.perf_counter()
            it = iter(loader)
            n = 0
            while True:
                stepped = n == 3
                if stepped:  # let the prefetch fill, then time a next() whose batch is waiting
                    _train_step_for(0.5)
                c0, t0 = _cpu(), time.perf_counter()
                try:
                    x, _ = next(it)
                except StopIteration:
                    break
                t1, c1 = time.perf_counter(), _cpu()
                if n == 0:
                    if epoch == 0:
                        first_batch = t1 - t_iter
                    elif t_end_prev is not None:
                        epoch_starts.append(t1 - t_end_prev)
                elif stepped:
                    ready_next.append(t1 - t0)
                if n > 0:
                    cpu_per_batch.append(c1 - c0)
                images += x.shape[0]
                n += 1
                del x
            t_end_prev = time.perf_counter()
        elapsed = time.perf_counter() - t_start - 0.5 * epochs
        # Probe, outside the figures above: one more epoch, with a training step before
        # its last batch, so the pipeline has slack at the boundary; then the time to
        # the next epoch's first batch measures the boundary itself, not the phase of
        # a decode-bound pipeline (which the epoch-2 start above depends on). It also
        # times more next() calls whose batch is waiting (after steps at batches 3, 11,
        # ... while 4 remain), so that median is not half first-epoch start-up; out
        # here, the steps' prefetch does not flatter images/s.
        it = iter(loader)
        n = 0
        while True:
            stepped = n % 8 == 3 and n + 4 < len(loader)
            if stepped or n == len(loader) - 2:
                _train_step_for(0.5)
            t0 = time.perf_counter()
            try:
                x, _ = next(it)
            except StopIteration:
                break
            if stepped:
                ready_next.append(time.perf_counter() - t0)
            n += 1
            del x
        t0 = time.perf_counter()
        next(iter(loader))
        slack_start = time.perf_counter() - t0
        workers = (loader._pool.workers if kind == "fmq" else loader._iterator._workers)
        peak_rss = statistics.fmean(_peak_rss_mib(w.pid) for w in workers)
    finally:
        if kind == "fmq":
            loader.close()
        else:
            del loader
    firsts = [first_batch] + _fresh_first_batches(kind, dataset, batch_size, num_workers, ctx,
                                                  fresh_starts)
    return {
        "images_per_s": images / elapsed,
        "cpu_ms_per_batch_median": 1e3 * statistics.median(cpu_per_batch),
        "cpu_ms_per_batch_mean": 1e3 * statistics.fmean(cpu_per_batch),
        "ready_next_us": 1e6 * statistics.median(ready_next),
        "first_batch_ms": 1e3 * statistics.median(firsts),
        "epoch2_start_ms": 1e3 * statistics.median(epoch_starts) if epoch_starts else float("nan"),
        "slack_epoch_start_ms": 1e3 * slack_start,
        "worker_peak_rss_mib": peak_rss,
    }


def _peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (VmHWM), shared pages included."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _imagefolder(root: str, decoder: str = "auto"):
    """The same job through fmq_loader's own ImageFolder pipeline (reduced-scale decode, fused crop)."""
    from fmq_loader import ImageFolder, transforms as T

    return ImageFolder(root, decoder=decoder, transform=T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()]))


def _torchvision_pair(root: str, decoder: str = "auto"):
    """A torchvision user's script before and after the one-line switch: torchvision's
    ImageFolder and fmq_loader's, with the same transforms.v2 Compose (tvcompat.py)."""
    import torchvision
    from torchvision.transforms import v2

    from fmq_loader import ImageFolder

    transform = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return (torchvision.datasets.ImageFolder(root, transform=transform),
            ImageFolder(root, transform=transform, decoder=decoder))


PACKED_PIPELINES = {"packed-jpeg": "jpeg", "packed-raw": "raw"}


def _packed(root: str, record_format: str, folder: str, decoder: str = "auto"):
    """The same job from a pack of ``root`` (short side 256; packed before timing starts)."""
    from fmq_loader import PackedImages, transforms as T
    from fmq_loader.pack import PackOptions, pack

    pack(root, folder, PackOptions(short_side=256, record_format=record_format), progress=False)
    return PackedImages(folder, decoder=decoder, transform=T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()]))


def run(root: str, runs: int, batch_size: int = 64, num_workers: int = 2, epochs: int = 2,
        ctx: str = "fork", fmq_pipeline: str = "plain", decoder: str = "auto") -> dict:
    plain = PlainJPEGDataset(root)
    with tempfile.TemporaryDirectory(prefix="fmq_bench_pack_") as tmp:
        if fmq_pipeline == "torchvision":
            theirs, ours = _torchvision_pair(root, decoder)
            datasets = {"torch": theirs, "fmq": ours}
        elif fmq_pipeline in PACKED_PIPELINES:
            datasets = {"torch": plain, "fmq": _packed(root, PACKED_PIPELINES[fmq_pipeline],
                                                       os.path.join(tmp, "pack"), decoder)}
        else:
            datasets = {"torch": plain,
                        "fmq": plain if fmq_pipeline == "plain" else _imagefolder(root, decoder)}
        results: dict[str, list[dict]] = {"torch": [], "fmq": []}
        for _ in range(runs):
            for kind in ("torch", "fmq"):
                results[kind].append(_one_run(kind, datasets[kind], batch_size, num_workers,
                                              epochs, ctx))
                gc.collect()  # let the finished loader's workers exit before the next one starts
                time.sleep(1.0)
        if hasattr(datasets["fmq"], "close"):
            datasets["fmq"].close()
    return {kind: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for kind, rs in results.items()} | {"images": len(plain), "runs": runs}


def soak(root: str, epochs: int, batch_size: int = 64, num_workers: int = 2) -> list[tuple]:
    """Main-process RSS, open fds and slab bytes after each of ``epochs`` persistent epochs."""
    from fmq_loader import FMQLoader

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    rows = []
    with FMQLoader(PlainJPEGDataset(root), batch_size=batch_size, shuffle=True,
                   num_workers=num_workers, persistent_workers=True) as loader:
        for epoch in range(epochs):
            for batch in loader:
                del batch
            gc.collect()
            rows.append((epoch, rss_mib(), len(os.listdir("/proc/self/fd")),
                         loader._pool.results.shared_memory_bytes() / 2**20))
    return rows


def report(res: dict) -> str:
    rows = [("images/s", "images_per_s", "{:.0f}", True),
            ("main CPU per batch, median (ms)", "cpu_ms_per_batch_median", "{:.3f}", False),
            ("main CPU per batch, mean (ms)", "cpu_ms_per_batch_mean", "{:.3f}", False),
            ("next() with a batch waiting (us)", "ready_next_us", "{:.1f}", False),
            ("time to first batch (ms)", "first_batch_ms", "{:.0f}", False),
            ("epoch-2 start (ms)", "epoch2_start_ms", "{:.1f}", False),
            ("next-epoch start after slack (ms)", "slack_epoch_start_ms", "{:.1f}", False),
            ("peak RSS per worker (MiB)", "worker_peak_rss_mib", "{:.0f}", False)]
    lines = [f"{'metric':34} {'torch DataLoader':>17} {'FMQLoader':>11} {'fmq/torch':>10}"]
    for label, key, fmt, _ in rows:
        t, f = res["torch"][key], res["fmq"][key]
        ratio = f / t if t else float("nan")
        lines.append(f"{label:34} {fmt.format(t):>17} {fmt.format(f):>11} {ratio:>9.2f}x")
    runs = res["runs"]
    lines.append(f"({res['images']} images, {'one run' if runs == 1 else f'medians of {runs} runs'})")
    if "image_set" in res:
        lines.append(f"image set: {res['image_set']}")
    return "\n".join(lines)


def sweep(root: str, workers, runs: int, **kw) -> dict:
    """``run()`` once per num_workers: {num_workers: run()'s result}."""
    import warnings

    with warnings.catch_warnings():
        # the sweep goes past the core count on purpose: neither loader's "more workers than CPUs"
        warnings.filterwarnings("ignore", message=r"num_workers=\d+: this DataLoader will create")
        warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes")
        return {w: run(root, runs, num_workers=w, **kw) for w in workers}


def _plot(args, root: str, workers, images_line: str) -> int:
    import platform

    from fmq_loader.tools.plot import plot_workers

    res = sweep(root, workers, args.runs, batch_size=args.batch_size, ctx=args.context,
                fmq_pipeline=args.fmq_pipeline, decoder=args.decoder)
    series = {"FMQLoader": {w: r["fmq"]["images_per_s"] for w, r in res.items()},
              "torch DataLoader": {w: r["torch"]["images_per_s"] for w, r in res.items()}}
    if args.json:
        print(json.dumps({str(w): r for w, r in res.items()}, indent=2))
    else:
        print(f"{'num_workers':>11} {'torch DataLoader':>17} {'FMQLoader':>10} {'fmq/torch':>10}")
        for w in workers:
            t, f = series["torch DataLoader"][w], series["FMQLoader"][w]
            print(f"{w:>11} {t:>17.0f} {f:>10.0f} {f / t if t else float('nan'):>9.2f}x")
    pipeline = {"imagefolder": "FMQLoader + ImageFolder", "packed-jpeg": "FMQLoader + PackedImages (jpeg)",
                "packed-raw": "FMQLoader + PackedImages (raw)"}.get(args.fmq_pipeline, "same Dataset")
    note = (f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
            f"torch {torch.__version__}; {images_line} -> 224, batch {args.batch_size}, "
            f"{pipeline}; median of {args.runs} run(s)\n"
            f"python -m fmq_loader.bench loader --plot FILE.png --workers {args.workers}"
            + (f" --fmq-pipeline {args.fmq_pipeline}" if args.fmq_pipeline != "plain" else ""))
    plot_workers(series, args.plot, title="images/s against num_workers", note=note)
    print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmq_loader.bench loader", description=__doc__.split("\n")[0])
    p.add_argument("--root", help="image folder (default: generate --images-set in a temporary "
                                  "folder, removed when the run ends)")
    p.add_argument("--images-set", default="photo", choices=sorted(IMAGE_SETS),
                   help="which images to generate (default photo: photo-like 500x375, ~4.6 "
                        "bits/pixel; photo-1600: 1600x1200; skimage: real photographs, needs "
                        "scikit-image; simple: the old easy images)")
    p.add_argument("--images", type=int, default=1280, help="images to generate (default 1280)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--context", default="fork", choices=["fork", "spawn", "forkserver"])
    p.add_argument("--quick", action="store_true", help="640 images, 1 run (under a minute)")
    p.add_argument("--fmq-pipeline", default="plain",
                   choices=["plain", "imagefolder", "torchvision", *PACKED_PIPELINES],
                   help="plain: both loaders read the same user Dataset (default); torchvision: "
                        "torchvision.datasets.ImageFolder + a transforms.v2 Compose in DataLoader "
                        "against fmq_loader.ImageFolder + the same Compose in FMQLoader (needs "
                        "torchvision); imagefolder: "
                        "FMQLoader reads fmq_loader.ImageFolder + its transforms, torch the plain one; "
                        "packed-jpeg / packed-raw: FMQLoader reads PackedImages of the same folder "
                        "(packed first, short side 256, outside the timing), torch the plain one")
    p.add_argument("--decoder", default="auto", choices=["auto", "pillow", "simplejpeg", "turbo"],
                   help="ImageFolder's decoder with --fmq-pipeline imagefolder (default auto)")
    p.add_argument("--soak", type=int, metavar="EPOCHS",
                   help="instead: FMQLoader alone for EPOCHS persistent epochs; print RSS, fds, slab MiB")
    p.add_argument("--plot", metavar="FILE.png",
                   help="instead: images/s against num_workers (--workers) for both loaders, "
                        "as a table and a PNG chart (needs matplotlib)")
    p.add_argument("--workers", default="1,2,3,4", metavar="LIST",
                   help="num_workers values for --plot (default 1,2,3,4)")
    p.add_argument("--regrid", action="store_true",
                   help="both loaders read a lossless restart-gridded copy of the images "
                        "(fmq-loader regrid, made before the timing; same pixels), so the "
                        "region decoder reads only a crop's intervals")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.plot:
        from fmq_loader.tools.plot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            p.error(str(exc))
        try:
            workers = sorted({int(w) for w in args.workers.split(",")})
        except ValueError:
            workers = [0]
        if workers[0] < 1:
            p.error(f"--workers must be a comma-separated list of ints >= 1, got {args.workers!r}")
        args.workers = workers
    if args.quick:
        args.images, args.runs = 640, 1
    if args.root is not None:
        return _bench(args, args.root)
    # The generated set lives as long as this run: removed at the end, after an error or
    # Ctrl-C too (it was left in the temp dir, ~130 MB for the default photo set).
    with tempfile.TemporaryDirectory(prefix="fmq_bench_loader_") as tmp:
        try:
            root = prepare(args.images_set, args.images, root=os.path.join(tmp, args.images_set))
        except ImportError as exc:
            p.error(str(exc))
        return _bench(args, root)


def _bench(args, root: str) -> int:
    """What ``main`` runs once the image folder ``root`` exists."""
    images_line = describe(root, None if args.root else args.images_set)
    if args.regrid:
        from fmq_loader.images.regrid import regrid_folder

        with tempfile.TemporaryDirectory(prefix="fmq_bench_regrid_") as tmp:
            copy = os.path.join(tmp, "regrid")
            counts = regrid_folder(root, copy, progress=False)
            ratio = counts["bytes_out"] / max(1, counts["bytes_in"])
            images_line += (f"; both loaders read its `fmq-loader regrid` copy "
                            f"({counts['regridded']} JPEGs, {ratio:.3f}x the bytes, same pixels)")
            return _bench_on(args, copy, images_line)
    return _bench_on(args, root, images_line)


def _bench_on(args, root: str, images_line: str) -> int:
    if args.soak:
        for row in soak(root, args.soak, args.batch_size, args.num_workers):
            print("epoch %3d  main RSS %6.1f MiB  open fds %3d  slabs %5.1f MiB" % row)
        return 0
    if args.plot:
        return _plot(args, root, args.workers, images_line)
    res = run(root, args.runs, args.batch_size, args.num_workers, ctx=args.context,
              fmq_pipeline=args.fmq_pipeline, decoder=args.decoder)
    res["image_set"] = images_line
    print(json.dumps(res, indent=2) if args.json else report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
