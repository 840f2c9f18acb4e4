"""The train panel: settings (a magicgui form), Train/Stop, progress, loss curve, device and ETA."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, SpinBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_hybridseg.core.training.config import (
    ARCHITECTURES,
    PRESETS,
    TrainConfig,
    apply_overrides,
    model_classes,
    preset,
)
from napari_hybridseg.core.training.reports import StartReport, StepReport

from .plots import LinePlot

__all__ = ["ENCODERS", "LOSS_TERMS", "TrainPanel", "format_eta"]

#: Encoders offered in the panel (any segmentation-models-pytorch encoder works
#: from the CLI; these are the ones that fit the presets). Only the first brings its
#: ImageNet weights with it; the others start from ImageNet only where the Hugging
#: Face cache holds their weights, else choose "none" (from scratch).
ENCODERS = ("tu-efficientnet_lite0", "resnet18", "resnet34", "resnet50", "efficientnet-b0", "mobilenet_v2",
            "mobileone_s0")
WEIGHTS = ("imagenet", "none")
DEVICES = ("auto", "cpu", "cuda", "mps")

#: what each loss term the trainer reports means (the loss plot's tooltip and legend)
LOSS_TERMS = {
    "total": "everything the networks minimise this step (white, always drawn)",
    "strong": "cross-entropy + Dice on the full masks",
    "aux": "image-tag head: is each class present in the image",
    "pce": "weak points: cross-entropy on the clicked pixels",
    "box": "weak boxes: the projections of the prediction must fill each box",
    "mil": "weak tags/boxes: a class present must be predicted somewhere, an absent one nowhere",
    "pair": "weak boxes: neighbouring pixels of similar colour get the same label",
    "pixel": "MLB-Seg: the weak label and the network's own guess, weighted per pixel",
    "ple": "MLB-Seg: the prediction must agree with itself on zoomed views",
    "teacher": "MLB-Seg: agree with the averaged (mean-teacher) network",
    "cps": "DCR: the two networks teach each other on mixed images",
}


def format_eta(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


class TrainPanel(QWidget):
    """Training settings and live progress. The dock widget does the starting and stopping."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        base = preset("cpu-quick")
        self.preset = ComboBox(label="preset", choices=list(PRESETS), value="cpu-quick",
                               tooltip="cpu-quick: minutes on a laptop; gpu: paper-scale on a CUDA GPU")
        self.arch = ComboBox(label="architecture", choices=list(ARCHITECTURES), value=base.model.arch,
                             tooltip="Decoder of the segmentation network (segmentation-models-pytorch)")
        enc = list(dict.fromkeys([base.model.encoder, *ENCODERS]))
        self.encoder = ComboBox(label="encoder", choices=enc, value=base.model.encoder,
                                tooltip="Backbone of the network; a smaller one trains faster on a CPU")
        self.encoder_weights = ComboBox(
            label="encoder weights", choices=list(WEIGHTS), value=base.model.encoder_weights or "none",
            tooltip="imagenet: start from ImageNet (tu-efficientnet_lite0's weights ship with the plugin; other "
                    "encoders need them in the Hugging Face cache); none: train from scratch")
        self.input_size = SpinBox(label="input size (px)", min=32, max=1024, step=32, value=base.model.input_size,
                                  tooltip="Images are resized to this square size for training; predictions are "
                                          "returned at each image's own size")
        self.steps = SpinBox(label="steps", min=1, max=1_000_000, value=base.steps,
                             tooltip="Training steps (one batch each); Stop ends earlier and keeps a checkpoint")
        self.batch_size = SpinBox(label="batch size", min=1, max=256, value=base.batch_size,
                                  tooltip="Images per step; lower it if training runs out of memory")
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto",
                               tooltip="auto: CUDA GPU, else Apple MPS, else CPU")
        self.dii = CheckBox(text="per-image weights (DII)", value=base.dii.enabled,
                            tooltip="Learn how much to trust each weak image (Dynamic Instance Indicator)")
        self.dcr = CheckBox(text="co-regularization (DCR)", value=base.dcr.enabled,
                            tooltip="Two networks teach each other on mixed images (dynamic co-regularization). Off "
                                    "by default: on the benchmark it cost 2-4x a step and did not raise Dice; "
                                    "it is what uses unlabeled images")
        self.pixel_weights = CheckBox(text="pixel weights (MLB-Seg)", value=base.pixel.mode != "off",
                                      tooltip="Learn per-pixel trust in the weak label vs the model (MLB-Seg). Off by "
                                              "default: on the benchmark it lowered Dice")
        self.resume = CheckBox(text="continue from the last model", value=True,
                               tooltip="Start from the last run's weights instead of from scratch")
        self.form = Container(widgets=[self.preset, self.arch, self.encoder, self.encoder_weights, self.input_size,
                                       self.steps, self.batch_size, self.device, self.dii, self.dcr, self.pixel_weights,
                                       self.resume])
        box = QGroupBox("Settings")
        QVBoxLayout(box).addWidget(self.form.native)
        layout.addWidget(box)
        self.preset.changed.connect(self.apply_preset)
        #: settings the form does not show (tests and the demo use tiny runs)
        self.extra: dict = {}
        #: advanced settings as ``KEY=VALUE`` strings (dotted: ``dii.lr=0.2``), applied last
        self.overrides: list[str] = []

        self.train_btn = QPushButton("Train")
        self.train_btn.setMinimumHeight(32)
        self.train_btn.setToolTip("Save the annotations and train; press again to stop (keeps a checkpoint)")
        layout.addWidget(self.train_btn)
        self.status = QLabel("Not trained yet.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.plot = LinePlot("loss per step (log scale); hover for what each term is", log_y=True, max_series=8,
                             always="total", descriptions=LOSS_TERMS)
        self.plot.setMinimumHeight(170)
        layout.addWidget(self.plot, stretch=1)
        self.terms_label = QLabel("")
        self.terms_label.setWordWrap(True)
        self.terms_label.setStyleSheet("color: #aaaaaa")
        layout.addWidget(self.terms_label)
        self._start: StartReport | None = None

    def apply_preset(self, name: str | None = None) -> None:
        """Load a preset's values into the form."""
        cfg = preset(name or self.preset.value)
        if cfg.model.encoder not in self.encoder.choices:
            self.encoder.choices = [*self.encoder.choices, cfg.model.encoder]
        self.arch.value = cfg.model.arch
        self.encoder.value = cfg.model.encoder
        self.encoder_weights.value = cfg.model.encoder_weights or "none"
        self.input_size.value = cfg.model.input_size
        self.steps.value = cfg.steps
        self.batch_size.value = cfg.batch_size
        self.device.value = "cuda" if name == "gpu" else "auto"

    def config(self, collection=None) -> TrainConfig:
        """The TrainConfig the form describes, then :attr:`extra` and :attr:`overrides` (advanced settings).

        ``collection``: the model's ``classes``/``aux_classes`` come from it
        (:func:`~napari_hybridseg.core.training.config.model_classes`); without
        it they stay unset and the trainer derives them.
        """
        cfg = preset(self.preset.value)
        weights = None if self.encoder_weights.value == "none" else self.encoder_weights.value
        model = cfg.model.replace(arch=self.arch.value, encoder=self.encoder.value, encoder_weights=weights,
                                  input_size=int(self.input_size.value))
        if collection is not None:
            classes, aux_classes = model_classes(collection)
            model = model.replace(classes=classes, aux_classes=aux_classes)
        extra = dict(self.extra)
        model_extra = extra.pop("model", {})
        if model_extra:
            model = model.replace(**model_extra)
        cfg = cfg.replace(model=model, steps=int(self.steps.value), batch_size=int(self.batch_size.value),
                          device=self.device.value, dii=bool(self.dii.value), dcr=bool(self.dcr.value),
                          pixel_weights="exact" if self.pixel_weights.value else "off", **extra)
        return apply_overrides(cfg, self.overrides)

    # -- state -----------------------------------------------------------
    def set_running(self, running: bool) -> None:
        """Train turns into Stop while training runs; the settings lock."""
        self.train_btn.setText("Stop" if running else "Train")
        self.train_btn.setEnabled(True)
        self.form.enabled = not running

    def set_stopping(self) -> None:
        self.train_btn.setText("Stopping…")
        self.train_btn.setEnabled(False)

    def on_start(self, report: StartReport) -> None:
        self._start = report
        self.plot.clear()
        notes = "".join(f"\n• {n}" for n in report.notes)
        self.status.setText(
            f"Training on {report.device}: {report.n_strong} strong, {report.n_weak} weak, "
            f"{report.n_unlabeled} unlabeled images; steps {report.start_step}→{report.total_steps}.{notes}"
        )

    def on_step(self, report: StepReport) -> None:
        # cheap: this runs on the main thread once per training step
        new = any(name not in self.plot.series for name in report.losses)
        for name, value in report.losses.items():
            self.plot.add_point(name, report.step, value)
        if new:
            self.terms_label.setText("; ".join(f"<b>{n}</b>: {LOSS_TERMS[n]}" for n in self.plot.drawn_names()
                                               if n in LOSS_TERMS))
        state = " (paused)" if report.paused else ""
        self.status.setText(
            f"Step {report.step}/{report.total_steps}{state} on {report.device} — "
            f"{report.sec_per_step:.2f} s/step, ETA {format_eta(report.eta_s)}, "
            f"loss {report.losses.get('total', float('nan')):.4f}"
        )

    def on_end(self, text: str) -> None:
        self.status.setText(text)

    def show_last_model(self, run_dir, step: int | None = None) -> None:
        """Say which model the review uses (after reopening a project that was trained before)."""
        if run_dir is None:
            self.status.setText("Not trained yet.")
            return
        at = f" (step {step})" if step is not None else ""
        self.status.setText(f"Last model: {run_dir}{at}; it predicts the image on screen, and Train continues "
                            "from it while 'continue from the last model' is ticked.")
