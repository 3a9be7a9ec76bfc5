"""Processing: intake into the queue, dispatch of bundles to providers, and their results."""
