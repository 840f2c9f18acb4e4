"""A trained run as a bioimage.io model package (``hybridseg export RUN --bioimageio OUT.zip``).

The package holds network 1 of the run as a TorchScript trace (the weights
any bioimage.io consumer runs without this package), its safetensors and
model config (the weights' source, for napari-hybridseg), the preprocessing
the network expects, a test input with the output the trace gives on it, the
class list (the output's channel names), the citations of both methods and
of the encoder's pretrained weights, and the run's learned per-image weights
(``gamma.json``) and ``run.json`` as attachments.

The network in the package is the bare network: an RGB image, values 0..255,
any size that is a multiple of 32 pixels, gives per-class probabilities of
the same size (softmax over the channels; the label of a pixel is the
channel of the highest). ``hybridseg predict`` does more (resizing to the
training scale, tiling huge images, mapping back to label values): the
package's documentation says so.

Needs the optional extra ``bioimageio`` (``bioimageio.spec``, ``bioimageio.core``),
imported only when a package is written or checked. Nothing here reaches the
network.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_hybridseg.core.errors import RunError

__all__ = ["CITATIONS", "ExportResult", "check_package", "export_bioimageio"]

#: what the package cites (DOIs only: checking them needs no network)
CITATIONS = (
    ("Pan et al., Label-Efficient Hybrid-Supervised Learning for Medical Image Segmentation, AAAI 2022 "
     "(Dynamic Instance Indicator: the learned per-image weights)", "10.1609/aaai.v36i2.20098"),
    ("Wei et al., Consistency-guided Meta-Learning for Bootstrapping Semi-Supervised Medical Image Segmentation, "
     "MICCAI 2023 (MLB-Seg: the meta-learned pixel weights)", "10.48550/arXiv.2307.09987"),
)
#: the encoder's pretrained weights (EfficientNet), cited when the run started from ImageNet weights
EFFICIENTNET = ("Tan and Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, ICML 2019 "
                "(the encoder and its ImageNet weights)", "10.48550/arXiv.1905.11946")


def _need_bioimageio():
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise RunError("bioimage.io export needs the optional packages bioimageio.spec and bioimageio.core: "
                       "pip install 'napari-hybridseg[bioimageio]'") from exc


class _Probabilities(torch.nn.Module):
    """Network 1 with the preprocessing done by the package: logits -> softmax over the classes."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        logits = out[0] if isinstance(out, tuple) else out
        return torch.softmax(logits.float(), dim=1)


@dataclass
class ExportResult:
    """What :func:`export_bioimageio` wrote."""

    path: Path
    classes: list[str]
    weights: list[str]
    test_input_shape: tuple[int, ...]


def _test_image(size: int, image_path: Path | None) -> np.ndarray:
    """RGB 0..255 float32 (1, 3, size, size): the given image resized, or a seeded synthetic one."""
    from napari_hybridseg.core.data.images import read_image, resize_image, to_float_rgb

    if image_path is not None:
        rgb = resize_image(to_float_rgb(read_image(image_path)), (size, size))
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
        blob = np.exp(-((yy - 0.45) ** 2 + (xx - 0.55) ** 2) / 0.05)
        rgb = np.stack([0.55 + 0.35 * blob, 0.3 + 0.2 * blob, 0.25 + 0.1 * xx], axis=-1)
        rgb = np.clip(rgb + rng.normal(0, 0.03, rgb.shape), 0, 1)
    return (np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)[None] * 255.0).astype(np.float32)


def _documentation(record: dict, classes: list[str], size: int) -> str:
    scale = record.get("train_scale")
    weights = record.get("sample_weights") or {}
    return f"""# napari-hybridseg segmentation model

Trained with napari-hybridseg {record.get('versions', {}).get('napari_hybridseg', '')}
from a few strong masks and many weak labels (boxes, points, tags), each weak image weighted by its
Dynamic Instance Indicator (Pan et al., AAAI 2022); `gamma.json` (attached) holds the learned weight of
each of the {len(weights)} weak image(s) and its history.

## Input

`image`: RGB, values 0..255, shape (batch, 3, y, x) with y and x multiples of 32. The package's
preprocessing normalises it with the ImageNet mean and standard deviation (what the network was trained
on). The network was trained on {size} px squares; images were resized by a median factor of
{scale if scale is not None else 'unknown'} from their original size, so resize yours alike for the best
results.

## Output

`probabilities`: per-class probabilities (softmax), shape (batch, {len(classes)}, y, x), channels
{', '.join(classes)}. The label of a pixel is the channel with the highest probability.
`hybridseg predict` (resizing, tiling, label values) does the rest when this package is used with
napari-hybridseg.

## Training

Step {record.get('step')} of {record.get('total_steps')}, on {record.get('device', '?')};
the settings are in the attached `run.json`. Encoder weights: {json.dumps(record.get('encoder_weights', {}))}.

## Validation

This package was checked with bioimageio.spec (format) and bioimageio.core (the test input gives the
test output) when it was written. It carries no accuracy figures: measure them on held-out images of
your own (napari-hybridseg's `hybridseg bench` does it for its own runs).
"""


def export_bioimageio(run_dir: str | Path, out_zip: str | Path, *, name: str | None = None,
                      authors: tuple[str, ...] = ("napari-hybridseg user",), license: str = "CC-BY-4.0",
                      test_image: str | Path | None = None, check: bool = True) -> ExportResult:
    """Write ``out_zip``, a bioimage.io model package of network 1 of ``run_dir``.

    Parameters
    ----------
    run_dir : path
        A run folder written by ``hybridseg train`` (``model/``, ``run.json``, ``gamma.json``).
    out_zip : path
        The package to write (a ``.zip``).
    name, authors, license
        The package's name (default: from the run folder), authors and licence (an SPDX id).
    test_image : path, optional
        An image to use as the test input (resized to the training size); default: a seeded synthetic one.
    check : bool
        Validate the written package with ``bioimageio.spec`` and raise if it is not valid.

    Raises
    ------
    RunError
        Not a run folder, the optional packages missing, or the package does not validate.
    """
    _need_bioimageio()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model.v0_5 import (
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        Doi,
        FileDescr,
        FixedZeroMeanUnitVarianceAlongAxisKwargs,
        FixedZeroMeanUnitVarianceDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    from napari_hybridseg.core.network.models import IMAGENET_MEAN, IMAGENET_STD
    from napari_hybridseg.core.training.checkpoint import load_run_model, read_run

    run_dir, out_zip = Path(run_dir), Path(out_zip)
    record = read_run(run_dir)
    net, model_config = load_run_model(run_dir / "model", what_to_do="export a run that finished a checkpoint")
    size = int(record.get("input_size") or model_config.input_size)
    classes = ["background"] + [str(c["name"]) for c in sorted(record.get("classes", []), key=lambda c: c["value"])
                                if int(c["value"]) != 0]
    n_out = int(model_config.classes or len(classes))
    if len(classes) != n_out:
        classes = ["background"] + [f"class_{i}" for i in range(1, n_out)]
    wrapped = _Probabilities(net.eval().float()).eval()

    with tempfile.TemporaryDirectory(prefix="hybridseg-bioimageio-") as tmp_name:
        tmp = Path(tmp_name)
        x = _test_image(size, None if test_image is None else Path(test_image))
        mean = np.array(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        std = np.array(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        with torch.no_grad():
            xt = torch.from_numpy((x - mean) / std)
            with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated; bioimage.io runs it
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(wrapped, xt, check_trace=False)
            y = traced(xt).numpy().astype(np.float32)
        traced.save(str(tmp / "weights_torchscript.pt"))
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", y)
        (tmp / "README.md").write_text(_documentation(record, classes, size), encoding="utf-8")
        attachments = []
        for src, dst in ((run_dir / "gamma.json", "gamma.json"), (run_dir / "run.json", "run.json"),
                         (run_dir / "model" / "model.safetensors", "model.safetensors"),
                         (run_dir / "model" / "hybridseg_model.json", "hybridseg_model.json")):
            if src.is_file():
                shutil.copyfile(src, tmp / dst)
                attachments.append(FileDescr(source=tmp / dst))

        step = ParameterizedSize(min=32, step=32)
        inputs = [InputTensorDescr(
            id=TensorId("image"),
            description="RGB image, values 0..255",
            axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier("r"), Identifier("g"), Identifier("b")]),
                  SpaceInputAxis(id=AxisId("y"), size=step), SpaceInputAxis(id=AxisId("x"), size=step)],
            test_tensor=FileDescr(source=tmp / "test_input.npy"),
            data=IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[FixedZeroMeanUnitVarianceDescr(kwargs=FixedZeroMeanUnitVarianceAlongAxisKwargs(
                axis=AxisId("channel"), mean=[float(v) for v in mean.ravel()],
                std=[float(v) for v in std.ravel()]))],
        )]
        outputs = [OutputTensorDescr(
            id=TensorId("probabilities"),
            description="per-class probabilities (softmax over the channels)",
            axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier(_identifier(c)) for c in classes]),
                  *[SpaceOutputAxis(id=AxisId(a), size=SizeReference(tensor_id=TensorId("image"), axis_id=AxisId(a)))
                    for a in ("y", "x")]],
            test_tensor=FileDescr(source=tmp / "test_output.npy"),
            data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        )]
        cites = list(CITATIONS)
        if (record.get("encoder_weights") or {}).get("weights") and "efficientnet" in model_config.encoder:
            cites.append(EFFICIENTNET)
        origin = record.get("encoder_weights") or {}
        descr = ModelDescr(
            name=name or f"hybridseg {run_dir.resolve().name}",
            description=(f"{model_config.arch} ({model_config.encoder}) segmenting {', '.join(classes[1:])}; "
                         "trained with napari-hybridseg from a few masks and many weak labels"),
            authors=[Author(name=a) for a in authors],
            cite=[CiteEntry(text=text, doi=Doi(doi)) for text, doi in cites],
            license=LicenseId(license),
            tags=["segmentation", "2d", "pytorch", "napari-hybridseg", "weak-supervision", "rgb"],
            documentation=FileDescr(source=tmp / "README.md"),
            inputs=inputs,
            outputs=outputs,
            attachments=attachments,
            version=Version("0.1.0"),
            weights=WeightsDescr(torchscript=TorchscriptWeightsDescr(
                source=tmp / "weights_torchscript.pt", pytorch_version=Version(torch.__version__.split("+")[0]),
                comment=f"network 1 of the run, traced; trained from: {origin.get('source', 'unknown')}")),
            config={"napari_hybridseg": {"step": record.get("step"), "input_size": size,
                                          "train_scale": record.get("train_scale"),
                                          "classes": record.get("classes", []),
                                          "encoder_weights": origin}},
        )
        out_zip.parent.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package(descr, output_path=out_zip)
    if check:
        problems = check_package(out_zip, reproduce=False)
        if problems:
            raise RunError(f"{out_zip}: the package does not validate: {problems}")
    return ExportResult(out_zip, classes, ["torchscript"], tuple(x.shape))


def _identifier(text: str) -> str:
    """A bioimage.io identifier from a class name (letters, digits, underscores)."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text).strip("_") or "class"
    return out if not out[0].isdigit() else f"c_{out}"


def check_package(path: str | Path, *, reproduce: bool = True) -> str:
    """Validate a package with ``bioimageio.spec`` (and, with ``reproduce``, run its test input with
    ``bioimageio.core`` and compare with its test output); '' when it passes, else what failed."""
    _need_bioimageio()
    from bioimageio.spec import load_description

    descr = load_description(str(path), perform_io_checks=True)
    summary = descr.validation_summary
    if summary.status not in ("valid-format", "passed"):
        return _failures(summary)
    if not reproduce:
        return ""
    from bioimageio.core import test_model

    summary = test_model(descr, weight_format="torchscript", devices=["cpu"])
    return "" if summary.status == "passed" else _failures(summary)


def _failures(summary) -> str:
    lines = [f"{d.name}: {'; '.join(str(e.msg) for e in d.errors)}" for d in summary.details
             if d.status == "failed" or d.errors]
    return " | ".join(lines) or str(summary.status)
