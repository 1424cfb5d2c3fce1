"""Errors a service raises; the RPC layer turns them into gRPC statuses the client maps to
its own exceptions (NOT_FOUND -> modal.exception.NotFoundError, and so on)."""

from __future__ import annotations

from grpclib import GRPCError, Status


def not_found(message: str) -> GRPCError:
    return GRPCError(Status.NOT_FOUND, message)


def invalid_argument(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)


def already_exists(message: str) -> GRPCError:
    return GRPCError(Status.ALREADY_EXISTS, message)


def failed_precondition(message: str) -> GRPCError:
    return GRPCError(Status.FAILED_PRECONDITION, message)


def unauthenticated(message: str) -> GRPCError:
    return GRPCError(Status.UNAUTHENTICATED, message)


def permission_denied(message: str) -> GRPCError:
    return GRPCError(Status.PERMISSION_DENIED, message)


def resource_exhausted(message: str) -> GRPCError:
    return GRPCError(Status.RESOURCE_EXHAUSTED, message)


def unimplemented(rpc_name: str) -> GRPCError:
    return GRPCError(Status.UNIMPLEMENTED, f"Homeport does not support {rpc_name} yet")
