"""The glacier U-Net and pretrained weights moved onto other bands by physical band name.

    model = build_unet("resnet34", in_channels=5, n_classes=4)
    report = transfer_first_layer(pretrained_state, HKH_CHANNELS, model, HACK_CHANNELS)
    loss = SegLoss(4, focal=1.0, dice=1.0, boundary=0.5, ramp_steps=100, optimizer=optimizer)
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .bands import HACK_BANDS, L7_BANDS, L8_BANDS, _fmt
from .metrics import IGNORE

__all__ = ["SegLoss", "TransferReport", "boundary_distance", "build_unet", "load_encoder_weights",
           "transfer_first_layer"]


def build_unet(encoder: str = "resnet34", in_channels: int = 5, n_classes: int = 4, **kwargs: Any) -> nn.Module:
    """An smp U-Net with random weights: smp's own pretrained path downloads even offline, so pretrained
    weights come from a local file, loaded with `transfer_first_layer` (see `kagglekit_nb.weights`)."""
    import segmentation_models_pytorch as smp

    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        close = difflib.get_close_matches(encoder, names, n=5)
        raise ValueError(f"encoder={encoder!r} is not an smp encoder; close names: {', '.join(close) or 'none'} "
                         "(all: segmentation_models_pytorch.encoders.get_encoder_names()).")
    for name, value in (("in_channels", in_channels), ("n_classes", n_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=n_classes, **kwargs)


@dataclass
class TransferReport:
    """What `transfer_first_layer` did: bands mapped by name, bands initialised, tensors copied/skipped."""

    first_layer: str
    mapped: dict[str, int]          # destination band -> source channel whose kernel it took
    initialised: list[str]          # destination bands the source never saw
    unused: list[str]               # source bands with no destination
    copied: list[str]               # other tensors copied unchanged
    skipped: dict[str, str]         # tensor -> why it kept its fresh value

    def __str__(self) -> str:
        pairs = ", ".join(f"{band} (source channel {i})" for band, i in self.mapped.items())
        lines = [f"first layer {self.first_layer}: mapped by name {pairs or 'none'}",
                 f"  initialised from the mean kernel: {', '.join(self.initialised) or 'none'}",
                 f"  source bands not used: {', '.join(self.unused) or 'none'}",
                 f"copied {len(self.copied)} tensors; kept {len(self.skipped)} fresh"
                 + (f" ({_fmt(self.skipped, 4)})" if self.skipped else "")]
        return "\n".join(lines)


def _first_conv(model: nn.Module, in_channels: int) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != in_channels:
                raise ValueError(f"the model's first convolution {name!r} takes {module.in_channels} channels "
                                 f"but dst_band_names has {in_channels}; build the model with "
                                 f"in_channels={in_channels}.")
            return f"{name}.weight"
    raise ValueError("dst_model has no Conv2d layer to map bands into.")


def _align_keys(src: Mapping[str, torch.Tensor], dst_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Rename `src` keys to the destination's: as is, encoder-only, or saved from a wrapper."""
    dst = set(dst_keys)

    def renamed(fn):
        return {fn(k): v for k, v in src.items()}

    # as is, an encoder's own keys (smp, torchvision, timm), a timm model inside smp's `tu-` encoder
    candidates = [renamed(lambda k: k), renamed(lambda k: f"encoder.{k}"), renamed(lambda k: f"encoder.model.{k}")]
    for prefix in ("module.", "model.", "_orig_mod."):
        candidates.append(renamed(lambda k, p=prefix: k.removeprefix(p)))
    return max(candidates, key=lambda c: len(dst.intersection(c)))


def transfer_first_layer(
    src_state_dict: Mapping[str, torch.Tensor],
    src_band_names: Sequence[str],
    dst_model: nn.Module,
    dst_band_names: Sequence[str],
) -> TransferReport:
    """Load pretrained weights into `dst_model`, mapping the first convolution's inputs by band name.

    Every tensor whose name and shape match is copied. In the first convolution a destination band
    gets the kernel the source learnt for the same physical band; a band the source never saw gets
    sum(source kernels) / n_dst (the mean kernel scaled by n_src / n_dst, timm's `adapt_input_conv`
    convention: a layer made only of such bands keeps the source's response to a uniform input).
    """
    src_names, dst_names = [str(b).lower() for b in src_band_names], [str(b).lower() for b in dst_band_names]
    band_ids = {k.lower() for k in (*L7_BANDS, *L8_BANDS, *HACK_BANDS)}
    for arg, names in (("src_band_names", src_names), ("dst_band_names", dst_names)):
        ids = [b for b in names if b in band_ids]
        if ids:
            raise ValueError(f"{arg} holds band ids {ids}, which mean different bands on different sensors; "
                             "pass physical names, e.g. physical_names(names, sensor='L8').")
        if len(set(names)) != len(names):
            raise ValueError(f"{arg}={list(names)} repeats a band; each physical band may appear once.")
    dst_state = dst_model.state_dict()
    key = _first_conv(dst_model, len(dst_names))
    src = _align_keys(src_state_dict, list(dst_state))
    if key not in src:
        raise ValueError(f"the source weights have no {key!r} (first convolution); their first keys are "
                         f"{_fmt(list(src_state_dict), 5)}.")
    w_src, w_dst = src[key].detach().float(), dst_state[key]
    if w_src.ndim != 4 or w_src.shape[1] != len(src_names):
        raise ValueError(f"source {key} has shape {tuple(w_src.shape)}: {w_src.shape[1] if w_src.ndim == 4 else '?'} "
                         f"input channels, but src_band_names lists {len(src_names)} bands.")
    if (w_src.shape[0], *w_src.shape[2:]) != (w_dst.shape[0], *w_dst.shape[2:]):
        raise ValueError(f"source {key} is {tuple(w_src.shape)} but the model's is {tuple(w_dst.shape)}; "
                         "use the same encoder as the pretraining run.")

    new_state = dict(dst_state)
    first = torch.empty_like(w_dst)
    fill = w_src.sum(1) / len(dst_names)
    mapped, initialised = {}, []
    for j, band in enumerate(dst_names):
        if band in src_names:
            first[:, j] = w_src[:, src_names.index(band)].to(first.dtype)
            mapped[band] = src_names.index(band)
        else:
            first[:, j] = fill.to(first.dtype)
            initialised.append(band)
    new_state[key] = first
    copied, skipped = [], {}
    for k, v in dst_state.items():
        if k == key:
            continue
        if k not in src:
            skipped[k] = "not in the source"
        elif tuple(src[k].shape) != tuple(v.shape):
            skipped[k] = f"shape {tuple(src[k].shape)} vs {tuple(v.shape)}"
        else:
            new_state[k] = src[k].detach().to(v.dtype)
            copied.append(k)
    dst_model.load_state_dict(new_state)
    unused = [b for b in src_names if b not in mapped]
    return TransferReport(key, mapped, initialised, unused, copied, skipped)


RGB_BANDS = ("red", "green", "blue")  # the input channels of ImageNet weights, by physical name


def load_encoder_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], band_names: Sequence[str], *,
                         source: str, encoder: str) -> TransferReport:
    """Load an encoder's ImageNet (RGB) weights into the U-Net's encoder (`transfer_first_layer` with the
    source bands red, green, blue) and check that every encoder tensor came from them; weights of
    another model are a ValueError saying what to attach instead."""
    advice = (f"Attach the weights of {encoder} itself (`kagglekit weights {encoder} --out DIR` makes a dataset "
              "of them), or set WEIGHTS = None.")
    try:
        report = transfer_first_layer(state_dict, RGB_BANDS, model, band_names)
    except ValueError as e:
        raise ValueError(f"the weights {source} do not fit the encoder {encoder!r} ({e}) {advice}") from None
    wanted = [k for k in model.state_dict() if k.startswith("encoder.") and not k.endswith("num_batches_tracked")]
    loaded = {report.first_layer, *report.copied}
    missing = [k for k in wanted if k not in loaded]
    if missing:
        raise ValueError(f"the weights {source} do not fit the encoder {encoder!r}: {len(missing)} of its {len(wanted)} "
                         f"tensors are missing or differ in shape (e.g. {_fmt(missing, 3)}). {advice}")
    return report


# -------------------------------------------------------------------------------------------- loss


def boundary_distance(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Signed distance of every pixel to each class's boundary, per image (B, C, H, W), scaled by the
    image side: negative inside the class, positive outside (Kervadec et al.'s boundary loss). A class
    absent from an image is +1 everywhere, one filling it -1; IGNORE pixels are 0."""
    from scipy.ndimage import distance_transform_edt as edt

    y = np.asarray(labels)
    b, h, w = y.shape
    out = np.ones((b, n_classes, h, w), np.float32)
    scale = float(max(h, w))
    for i in range(b):
        for c in range(n_classes):
            inside = y[i] == c
            if inside.all():
                out[i, c] = -1.0
            elif inside.any():
                out[i, c] = (edt(~inside) - (edt(inside) - 1.0) * inside) / scale
        out[i][:, y[i] == IGNORE] = 0.0
    return out


class SegLoss(nn.Module):
    """FOCAL x focal + DICE x dice (smp's multiclass losses) + a boundary term ramped in linearly over
    `ramp_steps` optimizer steps. The step count is read from the optimizer's own state, which every
    checkpoint holds, so the ramp continues exactly after a resume."""

    def __init__(self, n_classes: int, *, focal: float = 1.0, dice: float = 1.0, boundary: float = 0.0,
                 ramp_steps: int = 1, optimizer: torch.optim.Optimizer | None = None):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

        self.n_classes, self.weights = n_classes, (focal, dice, boundary)
        self.focal = FocalLoss("multiclass", ignore_index=IGNORE)
        self.dice = DiceLoss("multiclass", ignore_index=IGNORE)
        self.ramp_steps, self.optimizer = max(1, ramp_steps), optimizer

    def steps(self) -> int:
        if self.optimizer is None:
            return self.ramp_steps
        for state in self.optimizer.state.values():
            if "step" in state:
                return int(state["step"])
        return 0

    def boundary_weight(self) -> float:
        return self.weights[2] * min(1.0, self.steps() / self.ramp_steps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        focal_w, dice_w, _ = self.weights
        loss = logits.new_zeros(())
        if focal_w:
            loss = loss + focal_w * self.focal(logits, target)
        if dice_w:
            loss = loss + dice_w * self.dice(logits, target)
        w = self.boundary_weight()
        if w:
            dist = torch.from_numpy(boundary_distance(target.cpu().numpy(), self.n_classes)).to(logits.device)
            loss = loss + w * (logits.float().softmax(1) * dist).mean()
        return loss
