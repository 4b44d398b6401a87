"""``python -m pbd_integrations`` runs the ``pbd`` command."""

import sys

from pbd_integrations.cli import main

sys.exit(main())
