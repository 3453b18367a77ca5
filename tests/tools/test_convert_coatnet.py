"""tools/convert-timm-coatnet-to-d2.py on a checkpoint written by timm itself (a small MaxxVit CoAtNet with the
coatnet_0_rw flags and a classifier head), as its released model.safetensors files are."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from safetensors.torch import save_file
from torch import nn

from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.config import get_project_cfg
from dinat_m2f.modeling.backbone.coatnet import VARIANTS, D2CoAtNet
from log_capture import RecordLogs
from project_paths import REPO, import_script

TOOL = REPO / "tools" / "convert-timm-coatnet-to-d2.py"
convert_tool = import_script(TOOL, "convert_coatnet")

LAYOUT = dict(embed_dim=[16, 32, 48, 64], depths=[1, 1, 2, 1], stem_width=[8, 16])
IMG_SIZE = (64, 64)


def timm_checkpoint() -> dict:
    timm_maxxvit = pytest.importorskip("timm.models.maxxvit")
    fields = dict(VARIANTS["coatnet_0_rw_224"]["cfg"], **LAYOUT)
    fields["conv_cfg"] = timm_maxxvit.MaxxVitConvCfg(**fields["conv_cfg"])
    fields["transformer_cfg"] = timm_maxxvit.MaxxVitTransformerCfg(**dict(fields["transformer_cfg"], dim_head=16))
    torch.manual_seed(0)
    model = timm_maxxvit.MaxxVit(timm_maxxvit.MaxxVitCfg(**fields), img_size=IMG_SIZE, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, {k: v.contiguous() for k, v in model.state_dict().items()}


class WithBackbone(nn.Module):
    """Holds D2CoAtNet under `backbone.`, as the MaskFormer meta-architecture does."""

    def __init__(self):
        super().__init__()
        cfg = get_project_cfg()
        c = cfg.MODEL.COATNET
        c.EMBED_DIM, c.DEPTHS, c.STEM_WIDTH = LAYOUT["embed_dim"], LAYOUT["depths"], LAYOUT["stem_width"]
        c.DIM_HEAD, c.PRETRAIN_IMG_SIZE = 16, list(IMG_SIZE)
        self.backbone = D2CoAtNet(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("out_suffix", [".pkl", ".safetensors"])
def test_timm_checkpoint_converts_and_loads_with_only_the_output_norms_missing(tmp_path, out_suffix):
    reference, state = timm_checkpoint()
    assert any(k.startswith("head.fc.") for k in state) and "norm.weight" in state
    source = tmp_path / "model.safetensors"
    save_file(state, str(source))
    target = tmp_path / f"coatnet_d2{out_suffix}"
    convert_tool.main([str(source), str(target)])

    model = WithBackbone().eval()
    initial_norms = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.norm")}
    checkpointer = SafeDetectionCheckpointer(model)
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.load(str(target))
    log = "\n".join(logs.messages)
    missing = log.split("not found in the checkpoint:\n")[1]
    assert missing.splitlines() == [f"backbone.norm{i}.{{bias, weight}}" for i in range(4)]
    assert "not used by the model" not in log and "incompatible shapes" not in log
    loaded = model.state_dict()
    for key, value in initial_norms.items():
        assert torch.equal(loaded[key], value), key
    for key, value in state.items():
        if not key.startswith(("head.", "norm.")):
            assert torch.equal(loaded["backbone." + key], value), key

    # and computes what timm computes, also at a size timm was not built for (tables resized)
    reference.eval()
    for size in (IMG_SIZE, (96, 64)):
        if size != IMG_SIZE:
            reference.set_input_size(img_size=size)
        image = torch.randn(1, 3, *size)
        with torch.no_grad():
            x, y = model.backbone.stem(image), reference.stem(image)
            for ours, theirs in zip(model.backbone.stages, reference.stages):
                x, y = ours(x), theirs(y)
                assert (x - y).abs().max() < 1e-4, size


def test_not_a_coatnet_checkpoint_is_rejected_with_the_file_name(tmp_path):
    source = tmp_path / "dinat.pth"
    torch.save({"model": {"levels.0.blocks.0.attn.rpb": torch.zeros(2, 13, 13)}}, source)
    with pytest.raises(SystemExit, match=r"dinat.pth: Not a timm CoAtNet state_dict: unexpected keys \['levels"):
        convert_tool.main([str(source), str(tmp_path / "out.pkl")])
