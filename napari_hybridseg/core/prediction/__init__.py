"""Prediction: the one path from a trained run to label masks (:mod:`.predict`), used by the CLI,
the widget, training previews and the benchmark."""

from .predict import InputCache, Predictor, labels_from_logits, labels_from_probs

__all__ = ["InputCache", "Predictor", "labels_from_logits", "labels_from_probs"]
