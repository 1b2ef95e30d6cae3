"""``python -m cliplab.data.builders``: build shards and evaluation sets."""

from cliplab.data.builders import main

raise SystemExit(main())
