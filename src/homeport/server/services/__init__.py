"""Domain services: the decisions behind the RPCs, testable without gRPC."""
