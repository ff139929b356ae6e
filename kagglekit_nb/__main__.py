"""`python -m kagglekit_nb …` (see kagglekit_nb.cli)."""
import sys

from .cli import main

sys.exit(main())
