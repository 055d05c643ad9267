"""``python -m subsetlab``: the ``subsetlab`` command (what ``torchrun -m subsetlab`` starts)."""

import sys

from subsetlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
