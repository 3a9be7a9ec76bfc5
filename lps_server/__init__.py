"""LLM Provider Service: a gRPC server that queues essay comparisons and runs them on LLMs."""
