import sys

from gatesweep.cli import main

sys.exit(main())
