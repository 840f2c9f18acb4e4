"""Building, running, saving and loading the segmentation network.

One factory for segmentation-models-pytorch's ``Unet``, ``UnetPlusPlus`` and
``DeepLabV3Plus`` with any installed encoder, driven by a
:class:`~napari_hybridseg.core.config.ModelConfig`. Checkpoints use
segmentation-models-pytorch's own ``save_pretrained`` format
(``config.json`` + ``model.safetensors``), so a saved model also opens with
``segmentation_models_pytorch.from_pretrained``.

Model output: ``classes = n_classes + 1`` channels (channel 0 background),
softmax. With ``aux_classes > 0`` an image-level head (``aux_params``) predicts
one logit per foreground class (multi-label, for tags).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .config import ARCHITECTURES, ModelConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_model",
    "check_encoder_weights",
    "decoder_features",
    "forward",
    "last_layer",
    "load_model",
    "save_model",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    from huggingface_hub import hf_hub_download

    hint = (
        f"encoder weights {weights!r} for {encoder!r} are not available offline. Train from scratch "
        "(encoder_weights=None, the default), or on a machine with internet run once: "
        f"python -c \"import segmentation_models_pytorch as smp; smp.Unet('{encoder}', encoder_weights='{weights}')\" "
        "to fill the Hugging Face cache"
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
        different seeds).

    Returns
    -------
    torch.nn.Module
        A segmentation-models-pytorch model.
    """
    import segmentation_models_pytorch as smp

    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if config.classes < 2:
        raise ValueError("classes must be at least 2 (background + one class)")
    check_encoder_weights(config.encoder, config.encoder_weights)
    aux = {"classes": config.aux_classes, "dropout": 0.2} if config.aux_classes > 0 else None
    gen_state = None
    if seed is not None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        model = getattr(smp, config.arch)(
            encoder_name=config.encoder,
            encoder_weights=config.encoder_weights,
            in_channels=config.in_channels,
            classes=config.classes,
            aux_params=aux,
        )
    except KeyError as exc:  # smp's message lists every encoder; keep ours short
        raise ValueError(f"unknown encoder {config.encoder!r} for {config.arch}: {str(exc)[:200]}") from exc
    finally:
        if gen_state is not None:
            torch.random.set_rng_state(gen_state)
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
    (tmp / "hybridseg_model.json").write_text(json.dumps(config.to_dict(), indent=2))
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
