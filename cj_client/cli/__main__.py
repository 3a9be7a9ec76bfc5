"""`python -m cj_client.cli`: the `cj` command."""

from cj_client.cli import main

raise SystemExit(main())
