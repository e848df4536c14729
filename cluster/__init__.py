"""Launchers that turn trials into processes or allocations: local, Slurm (submitit), Ray Tune."""
