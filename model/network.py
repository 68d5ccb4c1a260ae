"""DESDnet: a two-stream (prediction + reconstruction) autoencoder with a mapping encoder.

Zhong, Chen, Jiang, Ren, "Reverse erasure guided spatio-temporal autoencoder with compact
feature representation for video anomaly detection", Sci China Inf Sci.

Shapes use B = batch, T = frames per clip (5), C = image channels, H = W = config.image_size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple

import torch
from torch import nn


@dataclass(frozen=True)
class DESDnetConfig:
    """Everything needed to rebuild the network and its scoring; stored inside every weights file."""

    channels: int = 3  # C: 3 for colour footage, 1 for grayscale
    image_size: int = 256  # frames are resized to image_size × image_size
    base_width: int = 64  # stage widths are base, 2·base, 4·base, 8·base
    frames: int = 5  # T: 4 previous frames + the current one
    patch_size: int = 16  # sliding window of the frame score (Algorithm A1)
    patch_stride: int = 4
    use_prediction: bool = True  # ablations (Table D1): prediction-only / reconstruction-only
    use_reconstruction: bool = True

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_size % 8 or self.image_size < 16:
            raise ValueError(f"image_size must be a multiple of 8 and >= 16, got {self.image_size}")
        if self.base_width < 1:
            raise ValueError(f"base_width must be positive, got {self.base_width}")
        if self.frames < 2:
            raise ValueError(f"frames must be at least 2, got {self.frames}")
        if not 1 <= self.patch_size <= self.image_size or self.patch_stride < 1:
            raise ValueError("patch_size must lie in [1, image_size] and patch_stride be >= 1")
        if not (self.use_prediction or self.use_reconstruction):
            raise ValueError("at least one of the prediction and reconstruction encoders is needed")

    @classmethod
    def paper(cls) -> DESDnetConfig:
        """The network as published: RGB, 256×256, widths 64/128/256/512."""
        return cls()

    @classmethod
    def lite(cls) -> DESDnetConfig:
        """Grayscale, 128×128, widths 16/32/64/128: trains on a 2-core CPU in under 2 hours.

        The score window is the paper's 16×16 / stride 4 in pixels, so at 128×128 it covers 4 times
        its share of the frame: on Ped2 that scored 94.7 % paper-protocol AUC against 89.5 % for
        8×8 / 2 (the same share as the paper's), with the same weights (bench/score_ablation.py).
        """
        return cls(channels=1, image_size=128, base_width=16, patch_size=16, patch_stride=4)

    @classmethod
    def named(cls, name: str) -> DESDnetConfig:
        presets = {"paper": cls.paper, "lite": cls.lite}
        if name not in presets:
            raise ValueError(f"unknown configuration {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    @property
    def widths(self) -> tuple[int, int, int, int]:
        w = self.base_width
        return (w, 2 * w, 4 * w, 8 * w)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DESDnetConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown configuration fields: {sorted(unknown)}")
        return cls(**data)

    def with_(self, **changes: object) -> DESDnetConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


class DESDnetOutput(NamedTuple):
    """What `DESDnet.forward` returns.

    image: (B, C, H, W) reconstruction of the current frame in [-1, 1].
    feature: (B, 8·base) mapping-encoder feature of the reconstruction (spatially averaged),
        or None when the mapping encoder was skipped.
    """

    image: torch.Tensor
    feature: torch.Tensor | None


def conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class Encoder(nn.Module):
    """Four stages of two (3×3 conv, BN, ReLU), 2×2 max-pooling between them.

    The last stage ends on its second convolution, without BN/ReLU.
    (B, in_ch, H, W) -> features at H, H/2, H/4, H/8 with widths w, 2w, 4w, 8w.
    """

    def __init__(self, in_ch: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stage1 = nn.Sequential(*conv_bn_relu(in_ch, w1), *conv_bn_relu(w1, w1))
        self.stage2 = nn.Sequential(*conv_bn_relu(w1, w2), *conv_bn_relu(w2, w2))
        self.stage3 = nn.Sequential(*conv_bn_relu(w2, w3), *conv_bn_relu(w3, w3))
        self.stage4 = nn.Sequential(*conv_bn_relu(w3, w4), nn.Conv2d(w4, w4, 3, padding=1))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = self.stage1(x)
        f2 = self.stage2(self.pool(f1))
        f3 = self.stage3(self.pool(f2))
        f4 = self.stage4(self.pool(f3))
        return f1, f2, f3, f4


class UpBlock(nn.Module):
    """3×3 transposed conv (stride 2) + BN + ReLU: doubles the resolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Decoder(nn.Module):
    """Bottleneck (B, 8w, H/8, W/8) + prediction skips -> (B, C, H, W) in [-1, 1]."""

    def __init__(self, widths: tuple[int, int, int, int], out_ch: int) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.up3 = UpBlock(w4, w3)
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * w3, w3), *conv_bn_relu(w3, w3))
        self.up2 = UpBlock(w3, w2)
        self.conv2 = nn.Sequential(*conv_bn_relu(2 * w2, w2), *conv_bn_relu(w2, w2))
        self.up1 = UpBlock(w2, w1)
        self.head = nn.Sequential(
            *conv_bn_relu(2 * w1, w1), *conv_bn_relu(w1, w1), nn.Conv2d(w1, out_ch, 3, padding=1), nn.Tanh()
        )

    def forward(
        self, bottleneck: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        f1, f2, f3 = skips
        x = self.conv3(torch.cat([self.up3(bottleneck), f3], dim=1))
        x = self.conv2(torch.cat([self.up2(x), f2], dim=1))
        return self.head(torch.cat([self.up1(x), f1], dim=1))


class DESDnet(nn.Module):
    """Prediction encoder over I_{t-4..t-1}, reconstruction encoder over I_t, fused and decoded.

    Ablations: with only one stream, its feature goes straight to the decoder (no fusion); a
    reconstruction-only model takes its skip connections from the reconstruction stream.
    """

    def __init__(self, config: DESDnetConfig) -> None:
        super().__init__()
        self.config = config
        c, widths = config.channels, config.widths
        self.prediction_encoder = (
            Encoder(c * (config.frames - 1), widths) if config.use_prediction else None
        )
        self.reconstruction_encoder = Encoder(c, widths) if config.use_reconstruction else None
        both = config.use_prediction and config.use_reconstruction
        self.fusion = (
            nn.Sequential(nn.Conv2d(2 * widths[3], widths[3], 1), nn.Tanh()) if both else None
        )
        self.decoder = Decoder(widths, c)
        self.mapping_encoder = Encoder(c, widths)

    def forward(
        self, clip: torch.Tensor, with_feature: bool = True, side_stream: torch.cuda.Stream | None = None
    ) -> DESDnetOutput:
        """clip: (B, T*C, H, W), frames oldest first, values in [-1, 1].

        with_feature=False skips the mapping encoder: the image is unchanged, feature is None.
        side_stream (CUDA): the reconstruction encoder runs on it, concurrently with the prediction
        encoder on the current stream; the result is the same.
        """
        cfg = self.config
        expected = cfg.frames * cfg.channels
        if clip.dim() != 4 or clip.shape[1] != expected or clip.shape[-2:] != (cfg.image_size,) * 2:
            raise ValueError(
                f"expected a clip of shape (B, {expected}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(clip.shape)}"
            )
        split = (cfg.frames - 1) * cfg.channels
        previous, current = clip[:, :split], clip[:, split:]
        if self.prediction_encoder is not None and self.reconstruction_encoder is not None:
            assert self.fusion is not None
            if side_stream is None:
                p1, p2, p3, p4 = self.prediction_encoder(previous)
                r4 = self.reconstruction_encoder(current)[3]
            else:
                main = torch.cuda.current_stream(clip.device)
                side_stream.wait_stream(main)  # the input is ready on the side stream too
                with torch.cuda.stream(side_stream):
                    r4 = self.reconstruction_encoder(current)[3]
                p1, p2, p3, p4 = self.prediction_encoder(previous)
                main.wait_stream(side_stream)
                r4.record_stream(main)  # freed for reuse only after the main stream is done with it
            bottleneck = self.fusion(torch.cat([p4, r4], dim=1))
            skips = (p1, p2, p3)
        else:
            encoder = self.prediction_encoder or self.reconstruction_encoder
            assert encoder is not None
            f1, f2, f3, bottleneck = encoder(previous if self.prediction_encoder is not None else current)
            skips = (f1, f2, f3)
        image = self.decoder(bottleneck, skips)
        feature = self.mapping_encoder(image)[3].mean(dim=(2, 3)) if with_feature else None
        return DESDnetOutput(image, feature)

    def num_parameters(self, with_mapping: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        if not with_mapping:
            total -= sum(p.numel() for p in self.mapping_encoder.parameters())
        return total


def count_flops(model: DESDnet, with_feature: bool = True) -> int:
    """Floating-point operations (2 × multiply-adds of convolutions) for one clip.

    Every convolution runs at image_size / 2^k (k = 0..3), so its cost is proportional to
    image_size². The count runs an uninitialised copy of the network on a 16×16 clip and scales
    the result exactly by (image_size / 16)²: the paper network costs milliseconds, not seconds.
    """
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        assert isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
        kernel = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):
            pixels = inputs[0].shape[-2] * inputs[0].shape[-1]
        else:
            pixels = output.shape[-2] * output.shape[-1]
        macs += module.in_channels * module.out_channels * kernel * pixels // module.groups

    cfg = model.config
    probe_size = 16
    probe_cfg = cfg.with_(image_size=probe_size, patch_size=min(cfg.patch_size, probe_size))
    with torch.device("meta"):
        probe = DESDnet(probe_cfg)
    probe = probe.to_empty(device="cpu").eval()  # values are irrelevant, only shapes count
    for m in probe.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    clip = torch.zeros(1, cfg.frames * cfg.channels, probe_size, probe_size)
    with torch.no_grad():
        probe(clip, with_feature=with_feature)
    # Σ c_i·(S/2^k_i)² = (S/16)²·Σ c_i·(16/2^k_i)²: an exact integer for S a multiple of 8.
    return 2 * macs * cfg.image_size**2 // probe_size**2
