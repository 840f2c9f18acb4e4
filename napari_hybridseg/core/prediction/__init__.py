"""Prediction: the one path from a trained run to label masks (:mod:`.predict`), used by the CLI,
the widget, training previews and the benchmark."""
