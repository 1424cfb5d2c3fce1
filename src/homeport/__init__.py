"""Homeport: a self-hosted server for unmodified Modal programs.

The public surface is the `homeport` command line (see `homeport --help`) and
`SUPPORTED_CLIENT_VERSION`. Everything under `homeport.server` and
`homeport.agent` is internal and may change without notice.
"""

SUPPORTED_CLIENT_VERSION = "1.6.4"

__all__ = ["SUPPORTED_CLIENT_VERSION"]
