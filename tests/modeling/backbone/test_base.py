"""What the backbones' base owns beyond the contract test: the size policy (pad, then crop back), activation
checkpointing's random-state replay and BatchNorm statistics, the per-family keys that turn it on, errors."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone
from torch import nn

from dinat_m2f import get_project_cfg
from dinat_m2f.modeling.backbone import MultiScaleBackbone, base, dinat, hrvit, swin


class Strided(MultiScaleBackbone):
    """res2..res5 by average pooling, one conv block per level run through run_block; records its input size."""

    checkpoint_blocks = r"blocks\.\d+"

    def __init__(self, input_multiple: int = 1):
        super().__init__()
        self.input_multiple = input_multiple
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)) for _ in range(4))
        self._set_outputs(range(4), [3] * 4)

    def forward_features(self, x):
        self.seen = tuple(x.shape[-2:])
        return {name: base.run_block(block, F.avg_pool2d(x, stride, ceil_mode=True))
                for name, stride, block in zip(base.FEATURE_NAMES, base.FEATURE_STRIDES, self.blocks)}


def test_a_family_that_needs_a_multiple_gets_a_padded_input_and_cropped_features():
    torch.manual_seed(0)
    padded, plain = Strided(input_multiple=32).eval(), Strided().eval()
    plain.load_state_dict(padded.state_dict())
    image = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        features = padded(image)
        assert padded.seen == (128, 160)
        by_hand = plain(F.pad(image, (0, 29, 0, 31)))
        unpadded = plain(image)
    assert plain.seen == (97, 131)
    for name, stride in zip(base.FEATURE_NAMES, base.FEATURE_STRIDES):
        height, width = -(-97 // stride), -(-131 // stride)
        assert features[name].shape[-2:] == (height, width) and features[name].is_contiguous()
        assert torch.equal(features[name], by_hand[name][..., :height, :width])
    assert not torch.equal(features["res2"], unpadded["res2"])  # zeros entered the convolutions


def test_checkpointed_batch_norm_counts_each_batch_once_and_unmatched_blocks_are_an_error():
    torch.manual_seed(0)
    initial = Strided().state_dict()
    runs = []
    for enabled in (False, True):
        model = Strided()
        model.load_state_dict(initial)
        model.activation_checkpointing = enabled
        image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        sum(f.sum() for f in model(image).values()).backward()
        runs.append(model)
    assert runs[1].blocks[0][1].num_batches_tracked.item() == 1
    for (key, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values()):
        assert torch.equal(a, b), key
    model = Strided()
    model.checkpoint_blocks = r"stages\.\d+"
    with pytest.raises(RuntimeError, match=r"Strided: no block matches its checkpoint_blocks 'stages"):
        model.activation_checkpointing = True


def test_checkpointing_replays_the_random_state_of_stochastic_depth():
    config = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.0, kernel_size=5,
                  drop_path_rate=0.5, drop_rate=0.2)
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = dinat.from_reference_config(config).train()
        model.activation_checkpointing = enabled
        torch.manual_seed(1)
        sum(f.square().sum() for f in model(torch.randn(2, 3, 64, 64)).values()).backward()
        grads.append({key: p.grad for key, p in model.named_parameters()})
    for key, grad in grads[0].items():
        assert torch.equal(grads[1][key], grad), key


def _cfg(name: str, **keys):
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.HRVIT.NORM = "BN"
    cfg.merge_from_list([item for pair in keys.items() for item in pair])
    return cfg


@pytest.mark.parametrize("name,family_key", [("D2SwinTransformer", "MODEL.SWIN.USE_CHECKPOINT"),
                                             ("D2HRViT", "MODEL.HRVIT.WITH_CP")])
def test_the_families_own_keys_turn_activation_checkpointing_on(name, family_key):
    with torch.device("meta"):
        assert build_backbone(_cfg(name)).activation_checkpointing is False
        assert build_backbone(_cfg(name, **{family_key: "True"})).activation_checkpointing is True
        assert build_backbone(_cfg(name, **{"MODEL.BACKBONE.ACTIVATION_CHECKPOINTING": "True"})).activation_checkpointing


def test_the_reference_arguments_turn_activation_checkpointing_on():
    with torch.device("meta"):
        assert swin.from_reference_config(dict(use_checkpoint=True)).activation_checkpointing
        assert hrvit.build_variant("hrvit_b1", with_cp=True).activation_checkpointing
        assert not hrvit.build_variant("hrvit_b1").activation_checkpointing


def test_unknown_variants_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown HRViT variant 'hrvit_b4'; known: \['hrvit_b1', 'hrvit_b2', 'hrvit_b3'\]"):
        hrvit.build_variant("hrvit_b4")
