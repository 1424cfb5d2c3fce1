"""The control plane: gRPC services for the modal client, blob HTTP listener, scheduler."""
