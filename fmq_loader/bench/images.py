"""Per-core image pipeline benchmark: ImageFolder + our transforms vs the plain Pillow pipeline.

Both pipelines run in this process on one core, on the same generated JPEGs, with the
same crop parameters (same seed):

- plain: what a torchvision user's pipeline does, written inline with PIL + numpy + torch:
  open -> convert("RGB") -> crop -> resize 224 (bilinear) -> flip -> uint8 CHW tensor.
- ours: ``ImageFolder`` with ``Compose([RandomResizedCrop(224), RandomHorizontalFlip(),
  PILToTensor()])``: crop and resize fused, and JPEGs decoded at reduced scale when the
  crop allows (NOTE [ reduced-scale decoding ] in decode.py), with the Pillow decoder,
  simplejpeg when installed, and the C region decoder when built (decoder "turbo":
  only the crop's rows and columns; NOTE [ region decoding ]).

Image sets (bench/imagesets.py): ``photo`` (photo-like 500x375), ``photo-1600`` (1600x1200)
and ``skimage`` (crops of real photographs, with scikit-image installed); the table names
each set with its files' size and bits per pixel.

Each figure is the median of ``--runs`` passes over the files (after one warm-up pass).
Run: ``python -m fmq_loader.bench.images [--quick]`` (``--quick`` finishes in well under
a minute).

``--steps`` prints, per image set, where one image's time goes instead: the plain
pipeline, Pillow's whole-file decode, libjpeg-turbo's entropy decoding alone (the
whole file at 1/8 scale, and skipping to the last rows), our region decode of the crop
(of the file, and of its ``fmq-loader regrid`` copy: only the crop's restart intervals),
and our whole pipeline on both (drawing its own crops, from the same distribution as
the others' fixed ones; docs/benchmarks.md, "Where a worker's time goes on a photo").
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from fmq_loader import transforms as T
from fmq_loader.images.datasets import ImageFolder
from fmq_loader.decode import fast_decoder_available, region_decoder_available
from fmq_loader.bench.imagesets import IMAGE_SETS, describe, prepare

__all__ = ["main", "run"]

SETS = ("photo", "photo-1600", "skimage")  # skimage only where scikit-image is installed
CROP = 224


def _plain_pipeline(paths: list[str], seed: int) -> None:
    """The pipeline a torchvision user writes, inline: crop then resize, two steps."""
    rng = random.Random(seed)
    params = T.RandomResizedCrop(CROP)
    for path in paths:
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        top, left, h, w = params.get_params(img.width, img.height, rng)
        img = img.crop((left, top, left + w, top + h))
        img = img.resize((CROP, CROP), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        torch.from_numpy(np.array(img)).permute(2, 0, 1)


def _our_pipeline(dataset: ImageFolder, seed: int) -> None:
    with T.use_rng(random.Random(seed)):
        for i in range(len(dataset)):
            dataset[i]


def _time_passes(fn, n_images: int, runs: int) -> float:
    """Median images/s over ``runs`` timed passes, after one warm-up pass."""
    fn()
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        rates.append(n_images / (time.perf_counter() - start))
    return statistics.median(rates)


def _prepared(root: str, per_class: int, seed: int, sets, out):
    """(name, folder) of each image set, generated under ``root`` when missing; a set that
    needs a package not installed (skimage) is reported on ``out`` and left out."""
    for name in sets:
        try:
            yield name, prepare(name, 4 * per_class, seed,
                                os.path.join(root, f"{name}_{per_class}"), progress=False)
        except ImportError as exc:
            print(f"skipped image set {name!r}: {exc}", file=out)


def _median_ms(fn, items: list, runs: int) -> float:
    """Median over ``runs`` passes (after a warm-up pass) of ms per call of ``fn(item)``."""
    for item in items:
        fn(item)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - start) / len(items) * 1e3)
    return statistics.median(times)


def steps(root: str, per_class: int, runs: int, seed: int = 0, out=None,
          sets=SETS) -> list[dict]:
    """Time the steps of one image's decode on each set (see the module docstring).

    Returns:
        one dict per row: size (the image set), step, ms (per image, median of ``runs``).
    """
    import io

    from fmq_loader.images.decode import EncodedImage, _jpegregion, _pick_scale

    out = sys.stdout if out is None else out
    torch.set_num_threads(1)
    crop = T.RandomResizedCrop(CROP)
    ours = T.Compose([crop, T.RandomHorizontalFlip(), T.PILToTensor()])
    rows = []
    for name, folder in _prepared(root, per_class, seed, sets, out):
        paths = [p for p, _ in ImageFolder(folder).samples]
        rng = random.Random(seed)
        items = []
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
            items.append((data, size, crop.get_params(size[0], size[1], rng)))

        def plain(item):
            data, _, (top, left, h, w) = item
            Image.open(io.BytesIO(data)).convert("RGB").resize(
                (CROP, CROP), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))

        def region(item):
            data, _, (top, left, h, w) = item
            scale = _pick_scale(w, h, (CROP, CROP))
            f = 1.0 / scale
            _jpegregion.decode(data, scale, int(left * f), int(top * f),
                               -int(-(left + w) * f // 1), -int(-(top + h) * f // 1))

        timed = [("plain Pillow: whole file, crop + resize", plain),
                 ("Pillow: whole-file decode only",
                  lambda item: Image.open(io.BytesIO(item[0])).convert("RGB"))]
        if _jpegregion is not None:
            timed += [("turbo: whole file at 1/8 (~entropy only)",
                       lambda item: _jpegregion.decode(item[0], 8, 0, 0, *item[1])),
                      ("turbo: skip to the last rows",
                       lambda item: _jpegregion.decode(item[0], 8, 0, item[1][1] // 8 - 1,
                                                       item[1][0] // 8, item[1][1] // 8)),
                      ("turbo: region decode of the crop", region)]
            gridded = [(_jpegregion.regrid(data, 2)[0], size, box) for data, size, box in items]
            timed.append(("turbo: region decode, regridded copy", region, gridded))
        timed.append(("fmq pipeline: crop, resize, flip, tensor",
                      lambda item: ours(EncodedImage(item[0]))))
        if _jpegregion is not None:
            timed.append(("fmq pipeline, regridded copy",
                          lambda item: ours(EncodedImage(item[0])), gridded))
        with T.use_rng(random.Random(seed)):
            for step, fn, *on in timed:  # on: other items than the files' (the regridded copy)
                rows.append(dict(size=name, step=step, ms=_median_ms(fn, on[0] if on else items,
                                                                     runs)))
        print(f"  {describe(folder, name)}", file=out)
    print(f"\nms per image, one thread, median of {runs} passes, the same crops in every row "
          f"but the fmq pipelines' (they draw their own, from the same distribution); "
          f"{platform.processor() or platform.machine()}, Pillow {Image.__version__}", file=out)
    print(f"| {'image set':<10} | {'step':<42} | {'ms':>7} |", file=out)
    print(f"|{'-' * 12}|{'-' * 44}|{'-' * 8}:|", file=out)
    for r in rows:
        print(f"| {r['size']:<10} | {r['step']:<42} | {r['ms']:>7.3f} |", file=out)
    return rows


def run(root: str, per_class: int, runs: int, seed: int = 0, out=None,
        sets=SETS) -> list[dict]:
    """Generate the image sets under ``root`` (if missing), time every pipeline, print a table.

    Args:
        root: folder for the generated datasets (reused when already there).
        per_class: images per set is ``4 * per_class``.
        runs: timed passes per figure; the median is reported.
        seed: dataset and crop seed.
        out: where the table goes (default sys.stdout).

    Returns:
        one dict per row: size (the image set), pipeline, images_per_s, ratio.
    """
    out = sys.stdout if out is None else out
    torch.set_num_threads(1)
    transform = T.Compose([T.RandomResizedCrop(CROP), T.RandomHorizontalFlip(), T.PILToTensor()])
    decoders = (["pillow"] + (["simplejpeg"] if fast_decoder_available() else [])
                + (["turbo"] if region_decoder_available() else []))
    rows, described = [], []
    for name, folder in _prepared(root, per_class, seed, sets, out):
        described.append(describe(folder, name))
        datasets = {d: ImageFolder(folder, transform=transform, decoder=d) for d in decoders}
        paths = [p for p, _ in datasets["pillow"].samples]
        n = len(paths)
        plain = _time_passes(lambda: _plain_pipeline(paths, seed), n, runs)
        rows.append(dict(size=name, pipeline="plain Pillow (torchvision-style)",
                         images_per_s=plain, ratio=1.0))
        for d in decoders:
            rate = _time_passes(lambda ds=datasets[d]: _our_pipeline(ds, seed), n, runs)
            rows.append(dict(size=name, pipeline=f"fmq_loader, decoder={d}",
                             images_per_s=rate, ratio=rate / plain))
    _print_table(rows, runs, per_class * 4, out)
    for line in described:
        print(f"  {line}", file=out)
    return rows


def _print_table(rows: list[dict], runs: int, n_images: int, out) -> None:
    cpu = platform.processor() or platform.machine()
    print(f"\nPer-core pipeline: decode -> RandomResizedCrop {CROP} -> flip -> uint8 CHW tensor",
          file=out)
    print(f"{n_images} JPEGs per image set (quality 90), median of {runs} runs, 1 thread; "
          f"{cpu}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"Pillow {Image.__version__}", file=out)
    header = f"| {'image set':<10} | {'pipeline':<34} | {'images/s':>9} | {'vs plain':>8} |"
    print(header, file=out)
    print(f"|{'-' * 12}|{'-' * 36}|{'-' * 10}:|{'-' * 9}:|", file=out)
    for r in rows:
        print(f"| {r['size']:<10} | {r['pipeline']:<34} | {r['images_per_s']:>9.0f} | "
              f"{r['ratio']:>7.2f}x |", file=out)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m fmq_loader.bench.images [--quick] [--dir DIR]``.

    Returns:
        the exit code (0).
    """
    parser = argparse.ArgumentParser(prog="python -m fmq_loader.bench images",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer images and runs: finishes in well under a minute")
    parser.add_argument("--dir", default=None,
                        help="where to generate (and reuse) the datasets; default a temp dir")
    parser.add_argument("--per-class", type=int, default=None,
                        help="images per class, 4 classes (default 50, --quick 10)")
    parser.add_argument("--sets", default=",".join(SETS),
                        help=f"comma-separated image sets, of {sorted(IMAGE_SETS)} "
                             f"(default {','.join(SETS)}; skimage needs scikit-image)")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed passes per figure (default 5, --quick 3)")
    parser.add_argument("--steps", action="store_true",
                        help="time the steps of one image's decode instead (where the time goes)")
    args = parser.parse_args(argv)
    per_class = args.per_class or (10 if args.quick else 50)
    runs = args.runs or (3 if args.quick else 5)
    if per_class < 1 or runs < 1:
        parser.error(f"--per-class and --runs must be >= 1, got {per_class} and {runs}")
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = [name for name in sets if name not in IMAGE_SETS]
    if unknown or not sets:
        parser.error(f"--sets: unknown image set(s) {unknown}; choose from {sorted(IMAGE_SETS)}")
    what = steps if args.steps else run
    if args.dir is not None:
        what(args.dir, per_class, runs, sets=sets)
    else:
        with tempfile.TemporaryDirectory(prefix="fmq_bench_images_") as tmp:
            what(tmp, per_class, runs, sets=sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
