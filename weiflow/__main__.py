"""``python -m weiflow`` is the ``weiflow`` command."""

import sys

from weiflow.cli import main

sys.exit(main())
