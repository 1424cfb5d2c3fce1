"""Timestamps in requests, checked: a malformed one is the caller's error, named."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from homeport.server import errors

# 1970 to 2242: anything outside is a mistake, and would overflow date arithmetic.
LATEST_S = 2**33


def seconds(stamp: Timestamp, field: str) -> float:
    """A request's timestamp as epoch seconds; INVALID_ARGUMENT naming the field if it is not valid."""
    try:
        value = stamp.ToNanoseconds() / 1e9
    except ValueError as error:
        raise errors.invalid_argument(f"{field} is not a valid timestamp: {error}") from None
    if not 0 <= value < LATEST_S:
        raise errors.invalid_argument(f"{field} ({value:.0f} s after 1970) is out of range")
    return value


MAX_BUCKETS = 10_000


def bucket_count(since: float, until: float, width: int) -> int:
    """How many buckets of `width` seconds cover [since, until); INVALID_ARGUMENT past MAX_BUCKETS."""
    count = max(int(-(-(until - since) // width)), 1)
    if count > MAX_BUCKETS:
        raise errors.invalid_argument(
            f"{count} buckets of {width} s are too many (at most {MAX_BUCKETS}); use larger buckets or a shorter range"
        )
    return count
