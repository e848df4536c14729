"""`torchrun --standalone --nproc_per_node=N -m trainer [CONFIG] [key=value ...]`."""

from __future__ import annotations

import sys

from trainer.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
