"""The parts of `scripts/bench`, which puts this directory on the import path by running from it."""
