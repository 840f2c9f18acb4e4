"""The Qt-free, napari-free engine: data model, store, targets, training, metrics.

Nothing in this package may import qtpy, a Qt binding or napari (a test
enforces it), so it runs headless, in scripts and in tests without a display.
"""
