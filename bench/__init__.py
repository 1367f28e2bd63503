"""Benchmarks of popsync: ``python -m bench.<name>``."""
