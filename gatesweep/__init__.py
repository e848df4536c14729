"""The `gatesweep` command line: one entry point over trainer, sweeps, cluster and analysis."""
