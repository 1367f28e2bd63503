"""``python -m bench.trust``: the validator's signature check, per event, in CPU time."""

from bench.trust.harness import main

raise SystemExit(main())
