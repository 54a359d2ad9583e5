"""The benchmarks behind the README tables: ``python -m fmq_loader.bench queue|loader|images``."""
