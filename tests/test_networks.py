"""Shapes and dtypes of every network on the tiny config, and a few behavioural properties."""
from __future__ import annotations

import torch

from conftest import config_path
from dagan.config import load_config
from dagan.geometry import Keypoints
from dagan.model import DaGAN
from dagan.networks.attention import DepthAwareAttention
from dagan.networks.backbones import VGG19, PretrainedWeightsMissing, ResNet, load_vgg19_weights
from dagan.networks.depth import PoseNetwork


@torch.no_grad()
def test_depth_shapes(tiny_model, images):
    features = tiny_model.depth_encoder(images)
    assert [tuple(f.shape[1:]) for f in features] == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    disparities = tiny_model.depth_decoder(features)
    assert [tuple(d.shape) for d in disparities] == [(2, 1, 64, 64), (2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    disparity = tiny_model.depth(images)
    assert torch.equal(disparity, disparities[0])
    assert disparity.dtype == torch.float32 and 0 < disparity.min() and disparity.max() < 1


@torch.no_grad()
def test_keypoint_shapes(tiny_model, images):
    kp = tiny_model.keypoints(images)
    assert kp.value.shape == (2, 5, 2) and kp.jacobian.shape == (2, 5, 2, 2)
    assert kp.value.abs().max() <= 1
    # Freshly initialised Jacobian heads predict the identity.
    assert torch.allclose(kp.jacobian, torch.eye(2).expand(2, 5, 2, 2), atol=1e-6)


@torch.no_grad()
def test_generator_shapes(tiny_model, images):
    source, driving = images[:1], images[1:]
    depth = tiny_model.depth(source)
    kp_source, kp_driving = tiny_model.keypoints(source, depth), tiny_model.keypoints(driving)
    out = tiny_model.generate(source, kp_source, kp_driving, source_depth=depth, return_attention=True)
    assert out.prediction.shape == (1, 3, 64, 64) and 0 <= out.prediction.min() and out.prediction.max() <= 1
    assert out.deformed.shape == (1, 3, 64, 64)
    assert out.occlusion_map.shape == (1, 1, 16, 16)
    assert out.mask.shape == (1, 6, 16, 16) and torch.allclose(out.mask.sum(1), torch.ones(1, 16, 16))
    assert out.sparse_deformed.shape == (1, 6, 3, 16, 16)
    assert out.deformation.shape == (1, 16, 16, 2)
    assert out.attention.shape == (1, 256, 256)


@torch.no_grad()
def test_cached_source_features_give_identical_output(tiny_model, images):
    source = images[:1]
    depth = tiny_model.depth(source)
    kp_source = tiny_model.keypoints(source, depth)
    kp_driving = tiny_model.keypoints(images)
    features = tiny_model.encode_source(source, depth)
    direct = tiny_model.generate(source.expand(2, -1, -1, -1), kp_source.index(slice(0, 1)), kp_driving,
                                 source_depth=depth.expand(2, -1, -1, -1))
    cached = tiny_model.generate(source.expand(2, -1, -1, -1), kp_source, kp_driving,
                                 source_features=features.expand(2), return_deformed=False)
    assert cached.deformed is None
    assert torch.allclose(direct.prediction, cached.prediction, atol=1e-6)


@torch.no_grad()
def test_discriminator_shapes(tiny_model, images):
    kp = Keypoints(torch.zeros(2, 5, 2))
    result = tiny_model.discriminator({"prediction_1": images}, kp.value)
    assert [tuple(f.shape) for f in result.feature_maps["1"]] == [(2, 16, 30, 30), (2, 32, 13, 13), (2, 64, 5, 5),
                                                                   (2, 64, 2, 2)]
    assert result.prediction_maps["1"].shape == (2, 1, 2, 2)


@torch.no_grad()
def test_spade_generator_shapes():
    config = load_config(config_path("tiny.yaml"), [
        "model_params.generator=SPADEDepthAwareGenerator", "model_params.generator_params.block_expansion=64",
        "model_params.generator_params.max_features=256"])
    torch.manual_seed(0)
    model = DaGAN(config).eval()
    source = torch.rand(1, 3, 64, 64)
    depth = model.depth(source)
    kp = model.keypoints(source, depth)
    out = model.generate(source, kp, kp, source_depth=depth)
    assert out.prediction.shape == (1, 3, 64, 64) and out.deformed.shape == (1, 3, 64, 64)


@torch.no_grad()
def test_pose_network_outputs():
    torch.manual_seed(0)
    network = PoseNetwork(18).eval()
    frames = torch.rand(2, 3, 64, 96)
    pose = network(frames, frames.flip(0))
    assert pose.axis_angle.shape == (2, 3) and pose.translation.shape == (2, 3)
    assert pose.intrinsics.shape == (2, 3, 3)
    assert torch.all(pose.intrinsics[:, 0, 0] > 0) and torch.all(pose.intrinsics[:, 1, 1] > 0)
    assert torch.all((pose.intrinsics[:, 0, 2] > 0) & (pose.intrinsics[:, 0, 2] < 96))
    assert torch.all((pose.intrinsics[:, 1, 2] > 0) & (pose.intrinsics[:, 1, 2] < 64))
    assert torch.equal(pose.intrinsics[:, 2], torch.tensor([[0.0, 0.0, 1.0]] * 2))


def test_attention_gate_starts_closed_and_gradients_flow():
    torch.manual_seed(0)
    attention = DepthAwareAttention(16)
    depth, warped = torch.rand(1, 16, 8, 8), torch.rand(1, 16, 8, 8, requires_grad=True)
    out, matrix = attention(depth, warped)
    assert matrix is None and torch.equal(out, warped)  # gamma starts at 0
    out.sum().backward()
    assert attention.gamma.grad is not None and attention.gamma.grad.abs() > 0


def test_backbones_have_torchvision_keys(tmp_path):
    vgg = VGG19()
    keys = list(vgg.state_dict())
    assert keys[0] == "features.0.weight" and keys[-1] == "features.34.bias" and len(keys) == 32
    features = vgg(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in features] == [64, 128, 256, 512, 512]
    assert "fc.weight" in ResNet(18).state_dict() and "layer4.1.bn2.running_var" in ResNet(18).state_dict()
    try:
        load_vgg19_weights(vgg, None)
    except PretrainedWeightsMissing as error:
        assert "train_params.vgg19_weights" in str(error)
    else:
        raise AssertionError("expected PretrainedWeightsMissing")
    path = tmp_path / "vgg19.pth"
    state = {**{key: value + 1 for key, value in vgg.state_dict().items()}, "classifier.0.weight": torch.zeros(1)}
    torch.save(state, path)
    load_vgg19_weights(vgg, str(path))
    assert torch.equal(vgg.features[0].weight, state["features.0.weight"])


def test_fused_attention_never_allocates_the_full_matrix():
    from torch.profiler import ProfilerActivity, profile

    from dagan.networks.attention import fused_attention
    generator = torch.Generator().manual_seed(0)
    query, key = torch.rand(1, 4096, 8, generator=generator), torch.rand(1, 4096, 8, generator=generator)
    value = torch.rand(1, 4096, 64, generator=generator)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        attended = fused_attention(query, key, value)
    largest = max(event.cpu_memory_usage for event in profiler.events())
    assert largest < 4096 * 4096 * 4 // 2  # a full float32 4096x4096 matrix would be 64 MiB
    reference = torch.softmax(query @ key.transpose(1, 2), dim=-1) @ value
    assert torch.allclose(attended, reference, atol=1e-5)


def test_upsample_conv_equals_upsample_then_conv():
    from dagan.networks.blocks import upsample_conv3x3
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 9, requires_grad=True)
    reference = conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    fast = upsample_conv3x3(x, conv)
    assert fast.shape == (2, 7, 12, 18) and torch.allclose(fast, reference, atol=1e-5)
    gradient_fast = torch.autograd.grad(fast.square().sum(), [x, conv.weight])
    gradient_reference = torch.autograd.grad(reference.square().sum(), [x, conv.weight])
    for ours, theirs in zip(gradient_fast, gradient_reference):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)
