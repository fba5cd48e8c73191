"""Prometheus metrics of mount daemons and `amlfs daemon` (docs/metrics.md).

The serving path counts in plain Python (ReadStats, OutputStats, Timings); nothing here
runs on it. At scrape time, in the exporter's own thread, collectors read those live
objects and the same status dictionaries `amlfs status` shows, so the two never
disagree about what was counted.
"""
