"""The gRPC edge: the only part of the server that imports `grpc` or `generated`."""
