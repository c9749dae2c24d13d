"""``python -m listener.cli``: the same as the ``pacs-ai`` command."""

import sys

from listener.cli.main import main

sys.exit(main())
