"""``python -m lnassist``: the ``lnassist`` command (:mod:`lnassist.commands`)."""

import sys

from lnassist.commands import main

if __name__ == "__main__":
    sys.exit(main())
