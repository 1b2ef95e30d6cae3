"""``python -m cliplab`` runs the command line (the same as the ``cliplab`` script)."""

from cliplab.cli import main

raise SystemExit(main())
