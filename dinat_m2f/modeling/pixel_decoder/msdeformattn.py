"""Mask2Former's pixel decoder: a multi-scale deformable-attention encoder over the three coarsest
backbone levels, then FPN levels down to ``COMMON_STRIDE``; parameter names are the original's."""
from typing import Callable, Dict, List, Optional, Tuple, Union

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from ...layers.ms_deform_attn import MSDeformAttn
from .build import PIXEL_DECODER_REGISTRY
from .position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttnPixelDecoder", "MSDeformAttnTransformerEncoderOnly"]


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: List[Tuple[int, int]],
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable DETR's encoder over a list of feature maps (no decoder)."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.encoder = MSDeformAttnTransformerEncoder(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points, num_encoder_layers
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """srcs, pos_embeds: (N, C, H_l, W_l) per level. Returns the encoded (N, sum H_l*W_l, C) and the
        levels' (H_l, W_l)."""
        spatial_shapes = [(src.shape[2], src.shape[3]) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flatten = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
                for level, pos in enumerate(pos_embeds)
            ],
            1,
        )
        # Inputs are never padded inside the batch tensor's extent here (the original's masks are all
        # False, its valid ratios all 1), so no padding mask is passed.
        return self.encoder(src_flatten, spatial_shapes, pos_flatten), spatial_shapes


class MSDeformAttnTransformerEncoder(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        num_layers: int,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            MSDeformAttnTransformerEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points)
            for _ in range(num_layers)
        )
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(
        spatial_shapes: List[Tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Pixel centres of every level, normalized to [0, 1] as (x, y): (1, sum H*W, levels, 2)."""
        points = []
        for h, w in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=dtype, device=device) / h,
                torch.linspace(0.5, w - 0.5, w, dtype=dtype, device=device) / w,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        # Every query uses the same normalized point on each level.
        return torch.cat(points, 0)[None, :, None].expand(1, -1, len(spatial_shapes), 2)

    def forward(
        self, src: torch.Tensor, spatial_shapes: List[Tuple[int, int]], pos: torch.Tensor
    ) -> torch.Tensor:
        reference_points = self.get_reference_points(spatial_shapes, src.device, src.dtype)
        reference_points = reference_points.expand(src.shape[0], -1, -1, -1)
        output = src
        for layer in self.layers:
            output = layer(output, pos, reference_points, spatial_shapes)
        return output


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
    ):
        """
        Args:
            input_shape: shapes (channels and stride) of the input features.
            transformer_*: the deformable encoder's dropout, heads, FFN width, depth and sampling points.
            conv_dim: channels of the encoder and the FPN levels.
            mask_dim: channels of the per-pixel mask embeddings.
            norm: normalization of the FPN convolutions.
            transformer_in_features: the features the encoder reads (e.g. res3, res4, res5).
            common_stride: stride of the mask features (FPN levels are added down to it).
        """
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES {missing} are not among the "
                f"head's input features {sorted(input_shape)}"
            )
        # Everything below is ordered from high to low resolution unless said otherwise.
        input_shape = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in input_shape]
        self.feature_strides = [shape.stride for _, shape in input_shape]
        self.feature_channels = [shape.channels for _, shape in input_shape]

        transformer_shape = [(name, shape) for name, shape in input_shape if name in transformer_in_features]
        self.transformer_in_features = [name for name, _ in transformer_shape]
        transformer_in_channels = [shape.channels for _, shape in transformer_shape]
        self.transformer_feature_strides = [shape.stride for _, shape in transformer_shape]
        self.transformer_num_feature_levels = len(self.transformer_in_features)

        # input_proj.0 projects the lowest-resolution level (the encoder's first).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for in_channels in transformer_in_channels[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            dropout=transformer_dropout,
            nhead=transformer_nheads,
            dim_feedforward=transformer_dim_feedforward,
            num_encoder_layers=transformer_enc_layers,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        weight_init.c2_xavier_fill(self.mask_features)

        # The transformer decoder reads the three lowest-resolution outputs.
        self.maskformer_num_feature_levels = 3
        self.common_stride = common_stride
        # FPN levels for the inputs finer than the encoder's finest, down to common_stride.
        self.num_fpn_levels = int(np.log2(min(self.transformer_feature_strides)) - np.log2(common_stride))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral_conv = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output_conv = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Applied from low to high resolution.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            # The original takes the encoder's heads from MASK_FORMER.NHEADS (DEFORMABLE_TRANSFORMER_ENCODER_
            # N_HEADS exists but is unused there); checkpoints depend on it.
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            # fixed in the original
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Returns the mask features (stride common_stride), the encoder's lowest-resolution output and the
        three lowest-resolution outputs (low to high resolution), all float32."""
        # Deformable sampling and the encoder run in float32, also under autocast.
        with torch.autocast(device_type=next(iter(features.values())).device.type, enabled=False):
            srcs, pos = [], []
            for idx, name in enumerate(self.transformer_in_features[::-1]):
                x = features[name].float()
                srcs.append(self.input_proj[idx](x))
                pos.append(self.pe_layer(x))
            memory, spatial_shapes = self.transformer(srcs, pos)

            batch_size = memory.shape[0]
            level_sizes = [h * w for h, w in spatial_shapes]
            out = [
                level.transpose(1, 2).reshape(batch_size, -1, h, w)
                for level, (h, w) in zip(memory.split(level_sizes, dim=1), spatial_shapes)
            ]
            for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
                lateral = self.lateral_convs[idx](features[name].float())
                upsampled = F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
                out.append(self.output_convs[idx](lateral + upsampled))

            multi_scale_features = out[: self.maskformer_num_feature_levels]
            return self.mask_features(out[-1]), out[0], multi_scale_features
