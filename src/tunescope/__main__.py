"""``python -m tunescope`` = the ``tunescope`` command."""

import sys

from tunescope.cli.main import main

sys.exit(main())
