"""Metrics, tracing and logs: recorded by the layers above, installed only by the entry point."""
