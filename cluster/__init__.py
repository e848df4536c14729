"""Launchers: turn a spec's trials into processes, Slurm jobs or Ray Tune trials.

    backend.py   the Launcher interface (available, run) and the registry of backends
    errors.py    BackendError / BackendUnavailable
    commands.py  `gatesweep plan | run | status | sync | warmup`: thin glue over the parts below
    common/      what every backend shares: the trials of a spec (prepare), their state, run
                 directories and locks (trialdir), MLflow parent/child runs and record delivery
                 (store, delivery), progress display, compile cache, the sequential-seeds loop
    local/       trials as processes on this machine
    slurm/       trials as submitit job arrays (pure sbatch builder + thin executor + in-job code)
    ray/         a `search:` block (or the spec's trials) as Ray Tune trials under ASHA

A new backend is a sub-package with a `LAUNCHER` (see backend.py). Nothing happens at import.
"""
