"""``python -m radio``: the ``radio`` command line (also under ``torchrun ... -m radio``)."""

from .tools.cli import main

raise SystemExit(main())
