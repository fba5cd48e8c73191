"""amlfs benchmarks: every figure is measured against a ceiling in the same run."""
