"""napari-hybridseg: label-efficient 2D medical image segmentation in napari.

Train one segmentation network from a few full masks and many cheap weak
labels (boxes, points, image tags), learning how much to trust every weak
image (Dynamic Instance Indicator) and every pixel (meta-learned pixel
weights, MLB-Seg).

The Qt-free engine lives in :mod:`napari_hybridseg.core`; the napari widgets
in :mod:`napari_hybridseg.widgets`; the command line in
:mod:`napari_hybridseg.cli`.
"""

__version__ = "0.1.0"
