from __future__ import annotations

import pytest
import torch
from torch import nn

from model.network import DESDnet, DESDnetConfig, count_flops
from tests.support.data import TINY


def meta_model(config: DESDnetConfig) -> DESDnet:
    """Parameters without memory or initialisation: the paper network is counted instantly."""
    with torch.device("meta"):
        return DESDnet(config)


def clip_for(config: DESDnetConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, config.frames * config.channels, config.image_size, config.image_size)
    return torch.rand(shape, generator=gen) * 2 - 1


def test_paper_parameters_and_flops() -> None:
    net = meta_model(DESDnetConfig.paper())
    assert net.num_parameters() / 1e6 == pytest.approx(18.47, abs=0.01)
    mapping = sum(p.numel() for p in net.mapping_encoder.parameters())
    assert net.num_parameters(with_mapping=False) == net.num_parameters() - mapping
    assert count_flops(net) / 1e9 == pytest.approx(133.1, abs=0.05)
    assert count_flops(net, with_feature=False) / 1e9 == pytest.approx(106.3, abs=0.05)


@pytest.mark.parametrize(
    "config",
    [TINY, DESDnetConfig(channels=3, image_size=40, base_width=3, patch_size=4, patch_stride=2)],
    ids=["tiny", "size40"],
)
def test_count_flops_matches_a_real_forward_pass(config: DESDnetConfig) -> None:
    """count_flops scales a 16x16 probe; count the same convolutions on a real full-size forward."""
    net = DESDnet(config).eval()
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        k = module.kernel_size[0] * module.kernel_size[1]
        spatial = inputs[0] if isinstance(module, nn.ConvTranspose2d) else output
        macs += module.in_channels * module.out_channels * k * spatial.shape[-2] * spatial.shape[-1]

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(clip_for(config, batch=1))
    assert count_flops(net) == 2 * macs
    assert 0 < count_flops(net, with_feature=False) < count_flops(net)
    assert net.training is False  # count_flops leaves the model as it was


def test_lite_shapes() -> None:
    cfg = DESDnetConfig.lite()
    assert (cfg.channels, cfg.image_size, cfg.widths) == (1, 128, (16, 32, 64, 128))
    torch.manual_seed(0)
    net = DESDnet(cfg).eval()
    with torch.no_grad():
        out = net(clip_for(cfg, batch=2))
    assert out.image.shape == (2, 1, 128, 128)
    assert out.feature is not None and out.feature.shape == (2, 128)
    assert out.image.abs().max() <= 1.0  # tanh output in model range


def test_skipping_the_mapping_encoder_leaves_the_image_unchanged() -> None:
    torch.manual_seed(0)
    net = DESDnet(TINY).eval()
    clip = clip_for(TINY)
    with torch.no_grad():
        full = net(clip, with_feature=True)
        bare = net(clip, with_feature=False)
    assert bare.feature is None and full.feature is not None
    assert full.feature.shape == (2, TINY.widths[3])
    assert torch.equal(full.image, bare.image)


@pytest.mark.parametrize("mode", ["prediction", "reconstruction"])
def test_ablations_build_and_use_only_their_stream(mode: str) -> None:
    cfg = TINY.with_(use_prediction=mode == "prediction", use_reconstruction=mode == "reconstruction")
    torch.manual_seed(0)
    net = DESDnet(cfg).eval()
    both = DESDnet(TINY).eval()
    assert net.fusion is None
    assert (net.prediction_encoder is None) == (mode == "reconstruction")
    assert (net.reconstruction_encoder is None) == (mode == "prediction")
    assert net.num_parameters() < both.num_parameters()
    clip = clip_for(cfg)
    with torch.no_grad():
        out = net(clip)
    assert out.image.shape == (2, 1, 32, 32) and out.feature is not None
    # The stream that is left out must not matter: change only its frames.
    changed = clip.clone()
    if mode == "prediction":
        changed[:, -cfg.channels :] = -changed[:, -cfg.channels :]  # the current frame
    else:
        changed[:, : -cfg.channels] = 0.0  # the previous frames
    with torch.no_grad():
        assert torch.equal(net(changed).image, out.image)
        assert not torch.equal(both(changed).image, both(clip).image)


@pytest.mark.parametrize(
    "shape",
    [(2, 4, 32, 32), (2, 5, 32, 16), (5, 32, 32), (2, 15, 32, 32)],
)
def test_bad_clip_shape_is_a_value_error_naming_the_shapes(shape: tuple[int, ...]) -> None:
    net = DESDnet(TINY)
    with pytest.raises(ValueError, match=r"expected a clip of shape \(B, 5, 32, 32\), got") as info:
        net(torch.zeros(shape))
    assert str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"image_size": 36}, "multiple of 8"),
        ({"image_size": 8}, "multiple of 8"),
        ({"base_width": 0}, "base_width"),
        ({"frames": 1}, "frames"),
        ({"patch_size": 64}, "patch_size"),
        ({"patch_stride": 0}, "patch_stride"),
        ({"use_prediction": False, "use_reconstruction": False}, "at least one"),
    ],
)
def test_invalid_configurations_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TINY.with_(**changes)


def test_config_json_round_trip_and_presets() -> None:
    for cfg in (TINY, DESDnetConfig.paper(), DESDnetConfig.lite()):
        assert DESDnetConfig.from_json(cfg.to_json()) == cfg
    assert DESDnetConfig.named("paper") == DESDnetConfig.paper()
    assert DESDnetConfig.named("lite") == DESDnetConfig.lite()
    with pytest.raises(ValueError, match="unknown configuration 'huge'"):
        DESDnetConfig.named("huge")
    with pytest.raises(ValueError, match="unknown configuration fields"):
        DESDnetConfig.from_json('{"channels": 1, "depth": 3}')
