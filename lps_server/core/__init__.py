"""The core: domain types, errors, settings and the bundling rule; it imports nothing of LPS."""
