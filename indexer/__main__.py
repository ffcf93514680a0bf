"""``python -m indexer`` is the same as the ``audifi-indexer`` console script."""

import sys

from indexer.cli import main

sys.exit(main())
