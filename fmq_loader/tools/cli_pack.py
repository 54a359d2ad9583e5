"""``fmq-loader pack`` and ``fmq-loader regrid``: the command lines of pack.py and regrid.py,
the two ways to prepare a folder ahead of training (registered by cli.py; shares cli_common.py)."""

from __future__ import annotations

import argparse
import os

__all__ = ["add_parser", "add_regrid_parser"]


def _cmd_pack(args: argparse.Namespace) -> int:
    from fmq_loader.tools.cli_common import UsageError
    from fmq_loader.images.decode import DecodeError
    from fmq_loader.images.pack import PackOptions, pack, parse_size
    from fmq_loader.images.packfile import PackError

    try:
        shard_bytes = parse_size(args.shard_size)
        opts = PackOptions(short_side=args.short_side if args.max_side is None else None,
                           max_side=args.max_side, record_format=args.format,
                           quality=args.quality, exif_transpose=args.exif_transpose,
                           on_error=args.on_error)
        meta = pack(args.src, args.out, opts, shard_size=shard_bytes, workers=args.workers,
                    resume=args.resume, overwrite=args.overwrite, verify=args.verify,
                    progress=not args.no_progress)
    except (ValueError, FileNotFoundError, DecodeError, PackError) as exc:
        raise UsageError(str(exc)) from exc
    stats = meta["stats"]
    size = sum(s["bytes"] for s in meta["shards"])
    rate = stats["images"] / stats["seconds"] if stats["seconds"] else float("nan")
    cores = max(1, min(stats["workers"], os.cpu_count() or 1))
    print(f"packed {meta['records']} images ({len(meta['skipped'])} skipped) into "
          f"{len(meta['shards'])} shard(s), {size / 1e6:.1f} MB, {args.format} records, in "
          f"{stats['seconds']:.1f} s: {rate:.0f} images/s, {rate / cores:.0f} per core"
          f"{'; verified' if args.verify else ''}")
    for path in meta["skipped"][:10]:
        print(f"  skipped (could not be decoded): {path}")
    return 0


def add_parser(sub) -> None:
    """Register ``pack`` on the ``fmq-loader`` subparsers."""
    from fmq_loader.tools.cli_common import positive_int

    p = sub.add_parser(
        "pack", help="pack an image folder into pre-resized shards that PackedImages reads",
        description="Resize every image of SRC (an ImageFolder tree, or a .csv/.json list of "
                    "path,label) so its short side (or long side) fits, store it as JPEG or "
                    "raw pixels in memory-mapped shards with an index and checksums, and "
                    "write OUT/meta.json last. Read it with fmq_loader.PackedImages(OUT). "
                    "e.g. fmq-loader pack data/train data/train.pack --short-side 256")
    p.add_argument("src", metavar="SRC", help="ImageFolder root, or a .csv/.json of path,label")
    p.add_argument("out", metavar="OUT", help="folder to write the pack into (new or empty)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--short-side", type=positive_int, default=256, metavar="N",
                      help="shrink so the shorter side is at most N (default 256)")
    side.add_argument("--max-side", type=positive_int, metavar="N",
                      help="shrink so the longer side is at most N instead")
    p.add_argument("--format", choices=("jpeg", "raw"), default="jpeg",
                   help="store JPEG bytes (default) or raw uint8 pixels (no decode at all; "
                        "about 10x the disk)")
    p.add_argument("--quality", type=int, default=90, metavar="Q",
                   help="JPEG quality 1-100 (default 90)")
    p.add_argument("--shard-size", default="1GB", metavar="SIZE",
                   help="close a shard at this size, e.g. 1GB, 512MB, 256MiB (default 1GB)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="encoding processes (default: the CPU count; 0: this process)")
    p.add_argument("--on-error", choices=("raise", "skip", "warn"), default="raise",
                   help="a source that cannot be decoded stops the pack (raise, default) or "
                        "is left out (skip, warn) and listed in meta.json")
    p.add_argument("--exif-transpose", action="store_true",
                   help="rotate images upright by their EXIF orientation tag")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted pack of the same SRC and options")
    p.add_argument("--overwrite", action="store_true", help="replace a pack already in OUT")
    p.add_argument("--verify", action="store_true",
                   help="re-read every record after packing (checksums, JPEG headers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_pack)


def _cmd_regrid(args: argparse.Namespace) -> int:
    from fmq_loader.tools.cli_common import UsageError
    from fmq_loader.images.regrid import regrid_folder

    try:
        counts = regrid_folder(args.src, args.out, interval=args.interval, workers=args.workers,
                               resume=args.resume, overwrite=args.overwrite,
                               progress=not args.no_progress)
    except (ValueError, RuntimeError, OSError) as exc:  # OSError: DecodeError, unwritable OUT
        raise UsageError(str(exc)) from exc
    kept = f", kept {counts['kept']} already there" if counts["kept"] else ""
    ratio = counts["bytes_out"] / counts["bytes_in"] if counts["bytes_in"] else float("nan")
    print(f"regridded {counts['regridded']} JPEGs, copied {counts['copied']} other files"
          f"{kept} "
          f"in {counts['seconds']:.1f} s; written {counts['bytes_out'] / 1e6:.1f} MB "
          f"({ratio:.3f}x the sources)")
    if counts["refused"]:
        print(f"  {counts['refused']} JPEG(s) copied unchanged: libjpeg refused them, or "
              "multi-picture (MPO) files; they decode at training time as before")
    return 0


def add_regrid_parser(sub) -> None:
    """Register ``regrid`` on the ``fmq-loader`` subparsers."""
    from fmq_loader.tools.cli_common import positive_int

    p = sub.add_parser(
        "regrid", help="copy an image folder losslessly so that JPEG crops decode faster",
        description="Copy SRC to OUT, rewriting every JPEG losslessly (same pixels) with a "
                    "restart marker every few MCUs, so fmq_loader's region decoder reads "
                    "only the part of a file a crop needs; other files are copied as they "
                    "are. Then use ImageFolder(OUT). "
                    "e.g. fmq-loader regrid data/train data/train-regrid")
    p.add_argument("src", metavar="SRC", help="the folder to copy (e.g. an ImageFolder root)")
    p.add_argument("out", metavar="OUT", help="folder to write (new or empty), not inside SRC")
    p.add_argument("--interval", type=positive_int, default=2, metavar="MCUS",
                   help="MCUs per restart interval at most (default 2: 32 px of 4:2:0)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes (default: the CPU count; 0: this process)")
    p.add_argument("--resume", action="store_true",
                   help="keep the files an interrupted run already wrote to OUT")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT, replacing files of the same name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_regrid)
