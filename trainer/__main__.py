"""`torchrun --standalone --nproc_per_node=N -m trainer [CONFIG] [key=value ...]`."""

from __future__ import annotations

import sys

from trainer.main import exit_process, main

if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))
