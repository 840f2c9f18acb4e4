"""napari widgets of napari-hybridseg.

Importing this package imports Qt and napari but never torch: the trainer and
the predictor are imported inside worker threads when first needed, so napari
starts fast with the plugin installed.
"""

from .dock import HybridSegWidget, copy_sample_project
from .session import Session

__all__ = ["HybridSegWidget", "Session", "copy_sample_project"]
