"""Benchmarks: ratios measured side by side in one run (never timed tests). `make bench`."""

from tasks.core.home import quiet_third_party

quiet_third_party()  # the figures, not other libraries' deprecation notes and progress bars
