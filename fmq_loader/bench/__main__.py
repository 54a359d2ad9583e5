"""``python -m fmq_loader.bench queue|loader|images|soak|perbatch [args]``: runs ``fmq_loader.bench.<name>.main(args)``."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("queue", "loader", "images", "soak", "perbatch")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: python -m fmq_loader.bench {{{'|'.join(BENCHMARKS)}}} [args]\n"
              "`python -m fmq_loader.bench NAME --help` describes one benchmark.")
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        got = repr(argv[0]) if argv else "nothing"
        print(f"usage: python -m fmq_loader.bench {{{'|'.join(BENCHMARKS)}}} [args]; "
              f"benchmark name must be one of {', '.join(BENCHMARKS)}, got {got}", file=sys.stderr)
        return 2
    # Import lazily: each benchmark pulls in only what it needs.
    module = importlib.import_module(f"fmq_loader.bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
