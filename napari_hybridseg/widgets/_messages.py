"""The one way the widgets tell the user something: a napari notification (tests replace :func:`notify`)."""

from __future__ import annotations

__all__ = ["notify"]


def notify(kind: str, message: str) -> None:
    """Show ``message`` as a napari notification of ``kind`` (``"info"``, ``"warning"``, ``"error"``)."""
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(message)
