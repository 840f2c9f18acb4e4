"""`hybridseg speed` (placeholder until its issue lands: registers nothing)."""

from __future__ import annotations


def register(subparsers) -> None:  # noqa: ARG001
    return None
