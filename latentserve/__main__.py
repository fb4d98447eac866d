"""`python -m latentserve` is the `latentserve` console script."""
from latentserve.cli import main

raise SystemExit(main())
