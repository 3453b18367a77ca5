"""CoAtNet (Dai et al., 2021) as a detectron2 backbone, in the layout of timm's MaxxVit CoAtNet models.

Module and parameter names follow timm's CoAtNet (timm 1.0.31, timm/models/maxxvit.py: `stem.*`,
`stages.i.blocks.j.*`), so timm's released `coatnet_*_rw` checkpoints load by their own names (this module
does not use timm). Added: `norm0..norm3`, a LayerNorm on each output; res2..res5 are stages S1..S4
(timm's `stages.0..3`). Dropped: timm's final `norm` and the classifier `head`. Models are described by
timm's MaxxVitCfg fields (`from_reference_config`); `VARIANTS` holds the released `_rw` models and the
paper's C0-C3 layouts under timm's names.

Two things differ from timm, both for dense inputs of any size:
- The relative-position bias follows the input's grid. timm builds a bias for one grid and needs a rebuild
  (with its tables resized) for another image size. Here each table stays at the grid it was trained for
  (the pretraining image size) and is resized to every feature map's grid with timm's rule
  (`resize_rel_pos_bias_table`), so the model run on another size equals timm's model rebuilt for it. The
  resized table is made once per (grid, device, dtype) and cached while no gradient flows into it; in
  training it is recomputed each call and the gradient reaches the table through the resize. `rmlp` models
  evaluate their MLP at the grid's log-spaced offsets instead.
- 2x2 average pooling rounds up (a partial window averages its real pixels), so every stage maps a size r to
  (r - 1) // 2 + 1 on both of a block's paths; timm rounds down (and its "dw" stride mode then fails on odd
  sizes). Equal to timm on even sizes.

Global attention at stride 16 costs heads x N x N for N tokens (its bias alone is 0.8 GB in float32 for
CoAtNet-0 at 1024x1024). Attention runs through `F.scaled_dot_product_attention` with the bias as an additive
mask, and `attn_window` > 0 restricts it to windows of that many tokens at stride 16 (half as many at stride
32) on maps larger than the window, each window with the table resized to the window's grid: the table as
trained when the window is the pretraining grid (14 for the 224 models).
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from torch import nn

from ...layers import DropPath, drop_path_rates
from .base import FEATURE_NAMES, MultiScaleBackbone, lookup_variant, out_feature_indices, run_block

__all__ = ["CoAtNet", "D2CoAtNet", "VARIANTS", "build_variant", "from_reference_config",
           "resize_rel_pos_bias_table"]
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def _rw_cfg(embed_dim, depths, stem_width, stride_mode="dw", attn_early=False, se_act="silu",
            shortcut_bias=True, rel_pos_type="bias", init_values=None) -> dict:
    """timm's `_rw_coat_cfg` family (the timm-trained `coatnet_*_rw` models), as MaxxVitCfg fields."""
    return dict(
        embed_dim=embed_dim, depths=depths, block_type=["C", "C", "T", "T"], stem_width=stem_width,
        stem_bias=False,
        conv_cfg=dict(block_type="mbconv", expand_ratio=4.0, expand_output=False, kernel_size=3, group_size=1,
                      pre_norm_act=True, output_bias=False, stride_mode=stride_mode, pool_type="avg2",
                      downsample_pool_type="avg2", padding="", attn_early=attn_early, attn_layer="se",
                      attn_act_layer=se_act, attn_ratio=0.25, init_values=1e-6, act_layer="silu",
                      norm_layer="batchnorm2d", norm_layer_cl="", norm_eps=1e-5),
        transformer_cfg=dict(dim_head=32, head_first=True, expand_ratio=4.0, expand_first=False,
                             shortcut_bias=shortcut_bias, attn_bias=True, attn_drop=0.0, proj_drop=0.0,
                             pool_type="avg2", rel_pos_type=rel_pos_type, rel_pos_dim=512, partition_ratio=32,
                             window_size=None, grid_size=None, no_block_attn=False, use_nchw_attn=False,
                             init_values=init_values, act_layer="gelu", norm_layer="layernorm2d",
                             norm_layer_cl="layernorm", norm_eps=1e-6),
        head_hidden_size=None, weight_init="vit_eff",
    )


def _paper_cfg(embed_dim, depths, stem_width) -> dict:
    """timm's `coatnet_0..3` (the paper's layouts; no released weights): GELU MBConvs expanding the output
    width, attention at the output width, biased shortcuts."""
    cfg = _rw_cfg(embed_dim, depths, stem_width)
    cfg["conv_cfg"].update(expand_output=True, pre_norm_act=False, output_bias=True, act_layer="gelu")
    cfg["transformer_cfg"].update(expand_first=True)
    cfg["head_hidden_size"] = embed_dim[-1]
    return cfg


def _variant(cfg: dict) -> dict:
    return {"cfg": cfg, "img_size": [224, 224]}


# Released timm weights (ImageNet top-1 in docs/BACKBONES.md) and the paper's C0-C3.
VARIANTS: dict[str, dict] = {
    "coatnet_0_rw_224": _variant(_rw_cfg([96, 192, 384, 768], [2, 3, 7, 2], [32, 64], stride_mode="pool",
                                         attn_early=True, se_act="relu", shortcut_bias=False)),
    "coatnet_1_rw_224": _variant(_rw_cfg([96, 192, 384, 768], [2, 6, 14, 2], [32, 64], attn_early=True,
                                         se_act="relu", shortcut_bias=False)),
    "coatnet_2_rw_224": _variant(_rw_cfg([128, 256, 512, 1024], [2, 6, 14, 2], [64, 128])),
    "coatnet_rmlp_2_rw_224": _variant(_rw_cfg([128, 256, 512, 1024], [2, 6, 14, 2], [64, 128],
                                              rel_pos_type="mlp", init_values=1e-6)),
    "coatnet_0_224": _variant(_paper_cfg([96, 192, 384, 768], [2, 3, 5, 2], 64)),
    "coatnet_1_224": _variant(_paper_cfg([96, 192, 384, 768], [2, 6, 14, 2], 64)),
    "coatnet_2_224": _variant(_paper_cfg([128, 256, 512, 1024], [2, 6, 14, 2], 128)),
    "coatnet_3_224": _variant(_paper_cfg([192, 384, 768, 1536], [2, 6, 14, 2], 192)),
}


# ----------------------------------------------------------------------------------------------------------
# Relative-position bias that follows the grid


def _geometric_coordinates(src_len: int, dst_len: int) -> list[float]:
    """Source sample positions of timm's table resize: offsets spaced by powers of q, where q (bisection on
    [1.01, 1.5]) makes the outermost offset reach dst_len // 2."""
    n = src_len // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1 - q ** n) / (1 - q) > dst_len // 2:
            right = q
        else:
            left = q
    offsets, offset = [], 1.0
    for k in range(1, n + 1):
        offsets.append(offset)
        offset += q ** k
    return [-d for d in reversed(offsets)] + [0.0] + offsets


@functools.lru_cache(maxsize=64)
def _resample_matrix(src_len: int, dst_len: int) -> torch.Tensor:
    """(dst_len, src_len) float32 weights of linear interpolation from the geometric source positions to the
    integer offsets -(dst_len // 2)..dst_len // 2; targets beyond the outermost source take its value."""
    if src_len == 1:
        return torch.ones(dst_len, 1)
    src = torch.tensor(_geometric_coordinates(src_len, dst_len), dtype=torch.float32)
    dst = torch.arange(-(dst_len // 2), dst_len // 2 + 1, dtype=torch.float32)
    left = (torch.searchsorted(src, dst, right=True) - 1).clamp(0, src_len - 2)
    weight = ((dst - src[left]) / (src[left + 1] - src[left])).clamp(0, 1)
    matrix = torch.zeros(dst_len, src_len)
    rows = torch.arange(dst_len)
    matrix[rows, left] = 1 - weight
    matrix[rows, left + 1] += weight
    return matrix


def _table_lengths(grid: Sequence[int]) -> tuple[int, int]:
    return 2 * grid[0] - 1, 2 * grid[1] - 1


def resize_table(table: torch.Tensor, dst_lengths: tuple[int, int]) -> torch.Tensor:
    """Resize a (heads, 2h-1, 2w-1) offset table to dst_lengths with timm's rule (BEiT's geometric sampling,
    separable bilinear interpolation): unchanged if both lengths match, else both axes re-sampled (an axis
    of the same length too). Computed in float32 (float64 for a float64 table); differentiable in the table."""
    if tuple(table.shape[1:]) == tuple(dst_lengths):
        return table
    dtype = torch.promote_types(table.dtype, torch.float32)
    rows = _resample_matrix(table.shape[1], dst_lengths[0]).to(table.device, dtype)
    cols = _resample_matrix(table.shape[2], dst_lengths[1]).to(table.device, dtype)
    with torch.autocast(table.device.type, enabled=False):
        return torch.einsum("ys,hst,xt->hyx", rows, table.to(dtype), cols)


def resize_rel_pos_bias_table(table: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]) -> torch.Tensor:
    """A timm `relative_position_bias_table` ((2h-1)(2w-1), heads) for an h x w grid, resized to dst_grid:
    what timm.layers.resize_rel_pos_bias_table returns for these arguments."""
    src_lengths, dst_lengths = _table_lengths(src_grid), _table_lengths(dst_grid)
    heads = table.shape[-1]
    resized = resize_table(table.reshape(*src_lengths, heads).permute(2, 0, 1), dst_lengths)
    return resized.permute(1, 2, 0).reshape(-1, heads)


@functools.lru_cache(maxsize=64)
def _offset_index(length: int) -> torch.Tensor:
    """(length, length) index of offset i - j + length - 1 into a table axis of 2 * length - 1."""
    positions = torch.arange(length)
    return positions[:, None] - positions[None, :] + length - 1


def bias_from_table(table: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(heads, 2h-1, 2w-1) offset table -> (1, heads, N, N) bias between the N = h*w tokens (row-major):
    query (yi, xi), key (yj, xj) take table[:, yi - yj + h - 1, xi - xj + w - 1]."""
    height, width = grid
    rows = _offset_index(height).to(table.device)[:, None, :, None]
    cols = _offset_index(width).to(table.device)[None, :, None, :]
    bias = table[:, rows, cols]  # (heads, y_q, x_q, y_k, x_k), gathered once in its final layout
    return bias.view(1, table.shape[0], height * width, height * width)


class _GridBias(nn.Module):
    """Base of the two relative-position modules: `table(grid, dtype)` gives the (heads, 2h-1, 2w-1) table for
    a grid, `bias(grid, dtype)` the additive attention mask. Tables are cached per (grid, device, dtype)
    while no gradient can flow into them and the module is deterministic (evaluation, frozen weights).
    Any call that records gradients (a training step, which precedes every optimizer step) empties the
    cache, and the key holds the version counter and storage of every parameter, so loading weights,
    in-place edits and moves are seen too."""

    _CACHE_SIZE = 4  # grids per module: a few test sizes in a row

    def __init__(self):
        super().__init__()
        self._cache: dict = {}

    def _make_table(self, grid: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def _cacheable(self) -> bool:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False  # a trace or graph must compute the table from the parameters
        if self.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.modules()):
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def table(self, grid: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        grid = (int(grid[0]), int(grid[1]))
        if not self._cacheable():
            self._cache.clear()  # the parameters may change after this call (fused optimizers keep _version)
            return self._make_table(grid).to(dtype)
        params = tuple((p._version, p.data_ptr()) for p in self.parameters())
        key = (grid, dtype, torch.is_inference_mode_enabled(), params)
        table = self._cache.get(key)
        if table is None:
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            table = self._cache[key] = self._make_table(grid).to(dtype)
        return table

    def bias(self, grid: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return bias_from_table(self.table(grid, dtype), grid)

    def _apply(self, fn, recurse=True):
        self._cache.clear()  # .to(), .half(), ...: entries would only wait for eviction
        return super()._apply(fn, recurse)


class RelPosBias(_GridBias):
    """timm's RelPosBias: a learned table ((2h-1)(2w-1), heads) for the grid it was trained at, resized to
    other grids."""

    def __init__(self, num_heads: int, grid: Sequence[int]):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(math.prod(_table_lengths(grid)), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _make_table(self, grid: tuple[int, int]) -> torch.Tensor:
        table = self.relative_position_bias_table.reshape(*_table_lengths(self.grid), -1).permute(2, 0, 1)
        return resize_table(table, _table_lengths(grid))

    def extra_repr(self) -> str:
        return f"trained_grid={self.grid}"


class _RelPosMlpLayers(nn.Module):
    def __init__(self, hidden_dim: int, num_heads: int):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden_dim)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.125)  # timm's, active in training only
        self.fc2 = nn.Linear(hidden_dim, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


@functools.lru_cache(maxsize=64)
def _log_offsets(grid: tuple[int, int]) -> torch.Tensor:
    """(2h-1, 2w-1, 2) offsets (dy, dx) mapped to sign(c) * ln(1 + |c|) (timm's mode 'cr')."""
    dy = torch.arange(-(grid[0] - 1), grid[0], dtype=torch.float32)
    dx = torch.arange(-(grid[1] - 1), grid[1], dtype=torch.float32)
    offsets = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1)
    return torch.sign(offsets) * torch.log1p(offsets.abs())


class RelPosMlp(_GridBias):
    """timm's RelPosMlp (mode 'cr'): an MLP (2 -> hidden, ReLU, -> heads) over log-spaced offsets, evaluated
    for any grid."""

    def __init__(self, num_heads: int, hidden_dim: int):
        super().__init__()
        self.mlp = _RelPosMlpLayers(hidden_dim, num_heads)

    def _make_table(self, grid: tuple[int, int]) -> torch.Tensor:
        offsets = _log_offsets(grid).to(self.mlp.fc1.weight.device)
        with torch.autocast(offsets.device.type, enabled=False):
            return self.mlp(offsets.to(self.mlp.fc1.weight.dtype)).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------------------
# Blocks


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of divisor, never more than 10% down (timm's rule for MBConv widths)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class Downsample2d(nn.Module):
    """2x2 average pooling (rounding up: a partial window averages its real pixels), then a 1x1 convolution
    `expand` when the width changes."""

    def __init__(self, dim: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
        self.expand = nn.Conv2d(dim, dim_out, 1, bias=bias) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerScale2d(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, act_layer: type[nn.Module]):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


@dataclass(frozen=True)
class MBConvCfg:
    expand_ratio: float = 4.0
    expand_output: bool = False
    kernel_size: int = 3
    pre_norm_act: bool = True
    output_bias: bool = False
    stride_mode: str = "dw"  # "pool": 2x2 pooling after the pre-norm; "dw": stride-2 depthwise conv
    attn_early: bool = False  # squeeze-excitation before (True) or after norm2
    attn_act_layer: str = "silu"
    attn_ratio: float = 0.25
    act_layer: str = "silu"
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class TransformerCfg:
    dim_head: int = 32
    head_first: bool = True  # qkv channels grouped per head (q, k, v of head 0, then head 1, ...)
    expand_ratio: float = 4.0
    expand_first: bool = False  # attention at the output width (True) or the input width
    shortcut_bias: bool = True
    attn_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    rel_pos_type: str = "bias"  # "bias": a learned table; "mlp": RelPosMlp
    rel_pos_dim: int = 512
    init_values: float | None = None  # LayerScale2d ls1/ls2 when set
    act_layer: str = "gelu"
    norm_eps: float = 1e-6


class MbConvBlock(nn.Module):
    """Pre-norm MBConv: BN(+act), [2x2 pool], 1x1 expand, BN+act, depthwise kxk [stride 2], SE and BN+act
    (order by attn_early), 1x1 project, plus a shortcut (pooled, 1x1 conv if the width changes)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: MBConvCfg, drop_path: float = 0.0):
        super().__init__()
        act_layer = _ACTIVATIONS[cfg.act_layer]
        mid_chs = make_divisible((out_chs if cfg.expand_output else in_chs) * cfg.expand_ratio)
        pool = stride == 2 and cfg.stride_mode == "pool"
        self.shortcut = Downsample2d(in_chs, out_chs, bias=cfg.output_bias) if stride == 2 else nn.Identity()
        self.pre_norm = nn.BatchNorm2d(in_chs, eps=cfg.norm_eps)
        self.pre_act = act_layer() if cfg.pre_norm_act else nn.Identity()
        self.down = Downsample2d(in_chs, in_chs) if pool else nn.Identity()
        self.conv1_1x1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid_chs, eps=cfg.norm_eps)
        self.act1 = act_layer()
        self.conv2_kxk = nn.Conv2d(mid_chs, mid_chs, cfg.kernel_size, stride=1 if pool else stride,
                                   padding=cfg.kernel_size // 2, groups=mid_chs, bias=False)
        self.attn_early = cfg.attn_early
        # SE reduces attn_ratio x the expanded width, or x the output width when the expansion follows it
        se_ratio = cfg.attn_ratio / cfg.expand_ratio if cfg.expand_output else cfg.attn_ratio
        se = SqueezeExcite(mid_chs, int(mid_chs * se_ratio), _ACTIVATIONS[cfg.attn_act_layer])
        self.add_module("se_early" if cfg.attn_early else "se", se)
        self.norm2 = nn.BatchNorm2d(mid_chs, eps=cfg.norm_eps)
        self.act2 = act_layer()
        self.conv3_1x1 = nn.Conv2d(mid_chs, out_chs, 1, bias=cfg.output_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.down(self.pre_act(self.pre_norm(x)))
        x = self.conv2_kxk(self.act1(self.norm1(self.conv1_1x1(x))))
        if self.attn_early:
            x = self.act2(self.norm2(self.se_early(x)))
        else:
            x = self.se(self.act2(self.norm2(x)))
        return self.drop_path(self.conv3_1x1(x)) + shortcut


@functools.lru_cache(maxsize=64)
def _window_layout(length: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of `window` along an axis of `length` (one window of `length` if it fits), the last one moved
    back inside the map instead of padded. Returns the gather index (windows * size,) and, per position,
    its place in the gathered axis, taken from the window that owns it (position // window)."""
    size = min(length, window)
    count = -(-length // window)
    starts = torch.tensor([min(i * window, length - size) for i in range(count)])
    gather = (starts[:, None] + torch.arange(size)).flatten()
    positions = torch.arange(length)
    owner = (positions // window).clamp(max=count - 1)
    return gather, owner * size + positions - starts[owner]


class Attention2d(nn.Module):
    """Multi-head self-attention over the tokens of an NCHW map, with a relative-position bias for the map's
    grid (or, with a window, for the window's grid), through F.scaled_dot_product_attention."""

    def __init__(self, dim: int, dim_out: int, cfg: TransformerCfg, rel_pos: _GridBias | None = None,
                 window: int = 0):
        super().__init__()
        dim_attn = dim_out if cfg.expand_first else dim
        if dim_attn % cfg.dim_head:
            raise ValueError(f"CoAtNet attention width {dim_attn} is not a multiple of dim_head {cfg.dim_head}")
        self.num_heads = dim_attn // cfg.dim_head
        self.dim_head = cfg.dim_head
        self.head_first = cfg.head_first
        self.window = window
        self.qkv = nn.Conv2d(dim, dim_attn * 3, 1, bias=cfg.attn_bias)
        self.rel_pos = rel_pos
        self.attn_drop = cfg.attn_drop
        self.proj = nn.Conv2d(dim_attn, dim_out, 1, bias=cfg.attn_bias)
        self.proj_drop = nn.Dropout(cfg.proj_drop)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, 3 * heads * d, h, w) -> (B, heads * d, h, w), global over the h x w tokens."""
        batch, _, height, width = qkv.shape
        if self.head_first:
            q, k, v = qkv.view(batch, self.num_heads, 3 * self.dim_head, -1).chunk(3, dim=2)
        else:
            q, k, v = qkv.view(batch, 3, self.num_heads, self.dim_head, -1).unbind(1)
        bias = None if self.rel_pos is None else self.rel_pos.bias((height, width), q.dtype)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2),
                                             attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0)
        return out.transpose(-1, -2).reshape(batch, -1, height, width)

    def _attend_in_windows(self, qkv: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = qkv.shape
        row_gather, row_place = (t.to(qkv.device) for t in _window_layout(height, self.window))
        col_gather, col_place = (t.to(qkv.device) for t in _window_layout(width, self.window))
        wh, ww = min(height, self.window), min(width, self.window)
        nh, nw = row_gather.numel() // wh, col_gather.numel() // ww
        windows = qkv.index_select(2, row_gather).index_select(3, col_gather)
        windows = windows.view(batch, channels, nh, wh, nw, ww).permute(0, 2, 4, 1, 3, 5)
        out = self._attend(windows.reshape(batch * nh * nw, channels, wh, ww))
        out = out.view(batch, nh, nw, -1, wh, ww).permute(0, 3, 1, 4, 2, 5).reshape(batch, -1, nh * wh, nw * ww)
        return out.index_select(2, row_place).index_select(3, col_place)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        if self.window and (x.shape[2] > self.window or x.shape[3] > self.window):
            out = self._attend_in_windows(qkv)
        else:
            out = self._attend(qkv)
        return self.proj_drop(self.proj(out))


class TransformerBlock2d(nn.Module):
    """Pre-norm transformer block on NCHW maps: x = shortcut(x) + [ls1] attn(norm1(x)), then
    x + [ls2] mlp(norm2(x)). A stride-2 block pools both paths 2x2 (the shortcut also widens by a 1x1 conv)."""

    def __init__(self, dim: int, dim_out: int, stride: int, cfg: TransformerCfg, grid: Sequence[int],
                 drop_path: float = 0.0, window: int = 0):
        super().__init__()
        if stride == 2:
            self.shortcut = Downsample2d(dim, dim_out, bias=cfg.shortcut_bias)
            self.norm1 = nn.Sequential()
            self.norm1.add_module("norm", LayerNorm2d(dim, eps=cfg.norm_eps))
            self.norm1.add_module("down", Downsample2d(dim, dim))
        else:
            self.shortcut = nn.Identity()
            self.norm1 = LayerNorm2d(dim, eps=cfg.norm_eps)
        num_heads = (dim_out if cfg.expand_first else dim) // cfg.dim_head
        rel_pos = RelPosMlp(num_heads, cfg.rel_pos_dim) if cfg.rel_pos_type == "mlp" else RelPosBias(num_heads, grid)
        self.attn = Attention2d(dim, dim_out, cfg, rel_pos, window)
        self.ls1 = LayerScale2d(dim_out, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim_out, eps=cfg.norm_eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Conv2d(dim_out, int(dim_out * cfg.expand_ratio), 1))
        self.mlp.add_module("act", _ACTIVATIONS[cfg.act_layer]())
        self.mlp.add_module("drop1", nn.Dropout(cfg.proj_drop))
        self.mlp.add_module("fc2", nn.Conv2d(int(dim_out * cfg.expand_ratio), dim_out, 1))
        self.mlp.add_module("drop2", nn.Dropout(cfg.proj_drop))
        self.ls2 = LayerScale2d(dim_out, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class Stem(nn.Module):
    """Conv3x3 stride 2, BN + activation, Conv3x3."""

    def __init__(self, in_chs: int, widths: Sequence[int], bias: bool, act_layer: str, norm_eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, widths[0], 3, stride=2, padding=1, bias=bias)
        self.norm1 = nn.BatchNorm2d(widths[0], eps=norm_eps)
        self.act1 = _ACTIVATIONS[act_layer]()
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act1(self.norm1(self.conv1(x))))


class CoAtNetStage(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = run_block(block, x)
        return x


def _halve(size: int) -> int:
    return (size - 1) // 2 + 1


class CoAtNet(MultiScaleBackbone):
    """Stem (stride 2) and four stages of MBConv ("C") or transformer ("T") blocks, each halving the
    resolution in its first block; `norm0..norm3` (LayerNorm, channels-last) on the outputs res2..res5."""

    checkpoint_blocks = r"stages\.\d+\.blocks\.\d+"

    def __init__(self, embed_dim: Sequence[int], depths: Sequence[int], stem_width: Sequence[int],
                 block_type: Sequence[str] = ("C", "C", "T", "T"), stem_bias: bool = False,
                 conv_cfg: MBConvCfg = MBConvCfg(), transformer_cfg: TransformerCfg = TransformerCfg(),
                 pretrain_img_size: Sequence[int] = (224, 224), drop_path_rate: float = 0.0,
                 attn_window: int = 0, in_chans: int = 3, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if not (len(embed_dim) == len(depths) == len(block_type) == 4):
            raise ValueError(f"CoAtNet needs 4 stages: embed_dim {list(embed_dim)}, depths {list(depths)}, "
                             f"block_type {list(block_type)}")
        if attn_window < 0:
            raise ValueError(f"CoAtNet attn_window must be 0 (global) or a window size in tokens, got {attn_window}")
        self.num_features = list(embed_dim)
        self.out_indices = tuple(out_indices)
        self.stem = Stem(in_chans, stem_width, stem_bias, conv_cfg.act_layer, conv_cfg.norm_eps)
        grid = [_halve(s) for s in pretrain_img_size]  # after the stem
        rates = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        in_chs = stem_width[-1]
        for i, (out_chs, depth, kind) in enumerate(zip(embed_dim, depths, block_type)):
            grid = [_halve(s) for s in grid]
            blocks = []
            for j in range(depth):
                stride, rate = (2 if j == 0 else 1), rates[i][j]
                if kind == "C":
                    blocks.append(MbConvBlock(in_chs, out_chs, stride, conv_cfg, rate))
                elif kind == "T":
                    window = -(-attn_window * 16 // (4 * 2 ** i))  # attn_window tokens at stride 16
                    blocks.append(TransformerBlock2d(in_chs, out_chs, stride, transformer_cfg, grid, rate, window))
                else:
                    raise ValueError(f"CoAtNet block_type must be 'C' or 'T', got {kind!r} for stage {i}")
                in_chs = out_chs
            self.stages.append(CoAtNetStage(blocks))
        self._add_output_norms(self.out_indices, self.num_features)
        self._set_outputs(self.out_indices, self.num_features)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outputs[FEATURE_NAMES[i]] = self._output_norm(i, x.permute(0, 2, 3, 1))
        return outputs


# ----------------------------------------------------------------------------------------------------------
# Construction from timm's MaxxVitCfg fields

# Values this implementation supports, per field; fields that only concern timm's MaxViT partitions or its
# classifier head are accepted and ignored.
_SUPPORTED = {
    "conv_cfg": {"block_type": {"mbconv"}, "group_size": {1}, "pool_type": {"avg2"},
                 "downsample_pool_type": {"avg2"}, "padding": {""}, "attn_layer": {"se"},
                 "stride_mode": {"pool", "dw"}, "attn_act_layer": set(_ACTIVATIONS),
                 "act_layer": set(_ACTIVATIONS), "norm_layer": {"batchnorm2d", ""}},
    "transformer_cfg": {"pool_type": {"avg2"}, "rel_pos_type": {"bias", "mlp"},
                        "act_layer": set(_ACTIVATIONS), "norm_layer": {"layernorm2d", ""}},
}
_IGNORED = {
    "conv_cfg": {"norm_layer_cl", "init_values"},  # MBConv has no layer scale
    "transformer_cfg": {"partition_ratio", "window_size", "grid_size", "no_block_attn", "use_nchw_attn",
                        "norm_layer_cl"},
}
_TOP_LEVEL = {"embed_dim", "depths", "block_type", "stem_width", "stem_bias", "conv_cfg", "transformer_cfg",
              "head_hidden_size", "weight_init"}


def _block_cfg(cls, section: str, fields: dict):
    known = set(cls.__dataclass_fields__)
    values = {}
    for name, value in fields.items():
        if name in _SUPPORTED[section] and value not in _SUPPORTED[section][name]:
            raise ValueError(f"CoAtNet {section}.{name} = {value!r} is not supported; "
                             f"supported: {sorted(map(str, _SUPPORTED[section][name]))}")
        if name in known:
            values[name] = value
        elif name not in _IGNORED[section] and name not in _SUPPORTED[section]:
            raise ValueError(f"unknown CoAtNet {section} field {name!r}")
    return cls(**values)


def _pair(value) -> list[int]:
    return [int(value), int(value)] if isinstance(value, (int, float)) else [int(v) for v in value]


def _constructor_kwargs(config: dict) -> dict:
    """CoAtNet arguments for timm's {"cfg": MaxxVitCfg fields, "img_size": ...}."""
    cfg = config["cfg"]
    unknown = set(cfg) - _TOP_LEVEL
    if unknown:
        raise ValueError(f"unknown CoAtNet cfg fields {sorted(unknown)}")
    return dict(
        embed_dim=list(cfg["embed_dim"]), depths=list(cfg["depths"]), stem_width=_pair(cfg["stem_width"]),
        block_type=list(cfg["block_type"]), stem_bias=bool(cfg["stem_bias"]),
        conv_cfg=_block_cfg(MBConvCfg, "conv_cfg", cfg["conv_cfg"]),
        transformer_cfg=_block_cfg(TransformerCfg, "transformer_cfg", cfg["transformer_cfg"]),
        pretrain_img_size=_pair(config.get("img_size", 224)),
    )


def from_reference_config(config: dict, **kwargs) -> CoAtNet:
    """Build from timm's arguments as the fixtures store them: {"cfg": MaxxVitCfg fields (nested conv_cfg
    and transformer_cfg), "img_size": the size the tables were trained at}. kwargs go to CoAtNet
    (drop_path_rate, attn_window, in_chans, out_indices)."""
    return CoAtNet(**_constructor_kwargs(config), **kwargs)


def variant_config(name: str, embed_dim=None, depths=None, stem_width=None, dim_head=None, img_size=None) -> dict:
    """VARIANTS[name] (a from_reference_config argument) with the given layout fields replaced."""
    config = copy.deepcopy(lookup_variant(VARIANTS, name, "CoAtNet"))
    for key, value in (("embed_dim", embed_dim), ("depths", depths), ("stem_width", stem_width)):
        if value:
            config["cfg"][key] = list(value) if not isinstance(value, int) else value
    if dim_head:
        config["cfg"]["transformer_cfg"]["dim_head"] = dim_head
    if img_size:
        config["img_size"] = _pair(img_size)
    return config


def build_variant(name: str, **kwargs) -> CoAtNet:
    """A model of VARIANTS by name (timm's names: coatnet_0_rw_224, ..., coatnet_0_224 for the paper's C0);
    kwargs go to CoAtNet."""
    return from_reference_config(variant_config(name), **kwargs)


@BACKBONE_REGISTRY.register()
class D2CoAtNet(CoAtNet):
    """CoAtNet configured by MODEL.COATNET.* (a VARIANT, optionally with its layout replaced) and
    MODEL.BACKBONE.ACTIVATION_CHECKPOINTING."""

    def __init__(self, cfg: CfgNode, input_shape: ShapeSpec):
        c = cfg.MODEL.COATNET
        try:
            config = variant_config(c.VARIANT, c.EMBED_DIM, c.DEPTHS, c.STEM_WIDTH, c.DIM_HEAD, c.PRETRAIN_IMG_SIZE)
        except ValueError as e:
            raise ValueError(f"MODEL.COATNET.VARIANT: {e}") from None
        super().__init__(
            **_constructor_kwargs(config), drop_path_rate=c.DROP_PATH_RATE, attn_window=c.ATTN_WINDOW,
            in_chans=input_shape.channels,
            out_indices=out_feature_indices(c.OUT_FEATURES, "MODEL.COATNET.OUT_FEATURES"),
        )
        self.activation_checkpointing = cfg.MODEL.BACKBONE.ACTIVATION_CHECKPOINTING
