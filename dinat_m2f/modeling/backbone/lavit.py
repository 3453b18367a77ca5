"""LaViT ("You Only Need Less Attention at Each Stage in Vision Transformers", CVPR 2024) as a detectron2
backbone.

No code or weights of LaViT were released; this module implements the paper's text (docs/BACKBONES.md, LaViT)
and is this project's design where the text leaves gaps. The four parts, as stated:

1. Vanilla-attention (VA) layers: multi-head self-attention whose pre-softmax scores A = Q K^T / sqrt(d) are
   kept (returned with the output).
2. Less-attention (LA) layers: no Q K^T. A^l = Psi(Theta(A^(l-1))^T)^T with Psi, Theta linear maps (no bias)
   over the token axis; with nn.Linear semantics that is A^l = W_psi A^(l-1) W_theta^T (Theta mixes the key
   axis, Psi the query axis). softmax(A^l) weights V, the only embedding an LA layer projects. Psi and Theta
   start as identities, so an untrained LA layer reuses the previous attention.
3. Attention residual (AR) at each stage transition: the last scores of stage m-1, heads as channels, go
   through a depthwise convolution with kernel 2 and stride 2, a 1x1 convolution mixing the heads
   (heads_(m-1) -> heads_m) and a per-head LayerScale, and are added to the first VA scores of stage m.
4. Diagonality-preserving (DP) loss on every LA layer's transformed scores A = A^l:
       L_DP = mean_(i,j) |A_ij - A_ji|  +  mean_(i != j) max(0, A_ij - A_ii)
   zero exactly when A is symmetric and every token scores itself at least as high as any other token
   ("a token most similar to itself"); the hinge keeps the minimum at zero. The means run over batch,
   heads, windows and the valid (unpadded) token pairs. The model's loss is the task loss plus
   ``dp_loss_weight`` times the sum over LA layers (``loss_lavit_dp`` in Mask2Former's loss dict). The
   classical matrix dominance |A_ii| >= sum_(j != i) |A_ij| is not used: at 64 tokens it would force
   one-hot attention.

Dense inputs (this project's choice). The paper's Psi and Theta are N x N maps for the N tokens of a
classification-size map: they cannot follow the input size, and at stride 4 of a 1024^2 image N = 65,536.
Here attention runs inside fixed, non-overlapping M x M windows (M = ``window_size``, default 8; maps are
zero-padded to a multiple of M and padded keys masked), so Psi and Theta are M^2 x M^2 maps that hold for
every input size. Windows rather than the project's neighborhood attention because Psi(Theta(A)^T)^T needs a
square token-by-token matrix over one fixed token set: a neighborhood gives every query its own key set,
so A has no transpose. Padded token pairs are zeroed in the kept scores (they neither feed Psi/Theta nor
count in the DP loss).

The AR under windows. Stage m merges 2x2 tokens of stage m-1 into one (Conv k=2 s=2), so "k=2 s=2 over the
scores" is read on the token grids: for a pair of stage-m tokens (p, q) the residual is
    sum over a, b, c, d in {0,1}: w[h, a, b, c, d] * A_(m-1)[h, (2p_y+a, 2p_x+b), (2q_y+c, 2q_x+d)] + bias[h]
(a depthwise 2x2 stride-2 convolution over the query grid and the key grid together, 16 weights per head,
started as their mean). The paper's literal 2D convolution over the N x N score image would pool only
token pairs adjacent in raster order and give N/2 x N/2 scores, while stage m has N/4 tokens. A stage-(m-1)
window of M x M tokens yields the scores among its (M/2)^2 parent tokens; a stage-m window of M x M tokens
spans 2 x 2 such blocks, so the residual fills the four diagonal blocks (token pairs whose children the
previous stage related) and is zero across blocks, which stage m-1 never compared.

The paper's global form stays available (``global_attention=True``): the window of each stage is the whole
map at ``pretrain_img_size`` (224: 56, 28, 14, 7 tokens a side), i.e. plain global attention with N x N
Psi/Theta and an AR that maps the whole score matrix (stage 1 at 224: 3136 x 3136 maps, 9.8M weights
each). Other input sizes then run in windows of that grid.

Everything else is a plain hierarchical ViT, as the paper describes it: a p x p patch embedding (Conv
kernel = stride = p, LayerNorm), stages separated by a Conv k=2 s=2 (doubling the channels, LayerNorm),
pre-norm blocks x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x))), and a LayerNorm ``norm0..norm3`` on each
output (res2..res5). The named variants (``VARIANTS``) are this project's: Swin-T/S/B's widths, depths and
heads (head dim 32), with about a third of each stage's layers VA.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from torch import nn

from ...layers import DropPath, Mlp, PatchEmbed, drop_path_rates, window_partition, window_reverse
from .base import FEATURE_NAMES, MultiScaleBackbone, lookup_variant, out_feature_indices, run_block

__all__ = [
    "LaViT", "D2LaViT", "VARIANTS", "build_variant", "from_reference_config", "diagonality_preserving_loss",
    "VanillaAttention", "LessAttention", "AttentionResidual",
]

# This project's sizes (no LaViT size is given by the spec): Swin-T/S/B's layouts, about a third VA layers.
VARIANTS: dict[str, dict] = {
    "lavit_tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), va_depths=(1, 1, 2, 1), num_heads=(3, 6, 12, 24),
                       drop_path_rate=0.2),
    "lavit_small": dict(embed_dim=96, depths=(2, 2, 18, 2), va_depths=(1, 1, 6, 1), num_heads=(3, 6, 12, 24),
                        drop_path_rate=0.3),
    "lavit_base": dict(embed_dim=128, depths=(2, 2, 18, 2), va_depths=(1, 1, 6, 1), num_heads=(4, 8, 16, 32),
                       drop_path_rate=0.5),
}


class WindowGrid(NamedTuple):
    """How an (height, width) map is cut into size x size windows (rows x cols of them, padded at the
    bottom/right). ``valid`` (rows * cols, size * size) marks real tokens; None when nothing is padded."""

    height: int
    width: int
    size: int
    rows: int
    cols: int
    valid: Optional[torch.Tensor]

    @property
    def key_mask(self) -> Optional[torch.Tensor]:
        """(1, windows, 1, 1, tokens): keys that exist, for scores of shape (B, windows, heads, N, N)."""
        return None if self.valid is None else self.valid[None, :, None, None, :]

    @property
    def pair_mask(self) -> Optional[torch.Tensor]:
        """(1, windows, 1, tokens, tokens): token pairs where both tokens exist."""
        if self.valid is None:
            return None
        return (self.valid[:, :, None] & self.valid[:, None, :])[None, :, None]


def window_grid(height: int, width: int, size: int, device: torch.device) -> WindowGrid:
    rows, cols = math.ceil(height / size), math.ceil(width / size)
    valid = None
    if rows * size != height or cols * size != width:
        ys = torch.arange(rows * size, device=device) < height
        xs = torch.arange(cols * size, device=device) < width
        valid = (ys[:, None] & xs[None, :]).view(rows, size, cols, size).transpose(1, 2).reshape(rows * cols, -1)
    return WindowGrid(height, width, size, rows, cols, valid)


def to_windows(x: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """(B, H, W, C) -> (B, windows, size * size, C), zero-padded at the bottom/right."""
    x = F.pad(x, (0, 0, 0, grid.cols * grid.size - x.shape[2], 0, grid.rows * grid.size - x.shape[1]))
    return window_partition(x, grid.size)


def from_windows(windows: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """Inverse of to_windows: (B, windows, size * size, C) -> (B, H, W, C), padding cropped."""
    x = window_reverse(windows, grid.size, grid.rows * grid.size, grid.cols * grid.size)
    return x[:, : grid.height, : grid.width]


def _zero_padded_pairs(scores: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    return scores if grid.valid is None else scores.masked_fill(~grid.pair_mask, 0.0)


def _attend(scores: torch.Tensor, v: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """softmax(scores) over the existing keys, times v: (B, nW, heads, N, N), (B, nW, heads, N, d) ->
    (B, nW, N, heads * d). The softmax runs in float32 for half-precision scores."""
    if grid.valid is not None:
        scores = scores.masked_fill(~grid.key_mask, float("-inf"))
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    out = probs @ v
    b, nw, heads, n, d = out.shape
    return out.transpose(2, 3).reshape(b, nw, n, heads * d)


class VanillaAttention(nn.Module):
    """Multi-head self-attention in windows that returns its pre-softmax scores A = Q K^T / sqrt(d)
    (plus the attention residual, when given) with its output."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: WindowGrid,
                residual: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, windows, N, C); residual (B, windows, heads, N, N) or None. Returns (out, scores)."""
        b, nw, n, c = x.shape
        q, k, v = self.qkv(x).view(b, nw, n, 3, self.num_heads, c // self.num_heads).permute(3, 0, 1, 4, 2, 5)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        if residual is not None:
            scores = scores + residual
        scores = _zero_padded_pairs(scores, grid)
        return self.proj(_attend(scores, v, grid)), scores


class LessAttention(nn.Module):
    """Less-attention layer: A^l = Psi(Theta(A^(l-1))^T)^T over the tokens of a window, softmax(A^l) V.
    Only V is projected from the input."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.theta = nn.Linear(num_tokens, num_tokens, bias=False)
        self.psi = nn.Linear(num_tokens, num_tokens, bias=False)
        self.proj = nn.Linear(dim, dim)
        with torch.no_grad():  # start by reusing the previous layer's attention
            self.theta.weight.copy_(torch.eye(num_tokens))
            self.psi.weight.copy_(torch.eye(num_tokens))

    def transform(self, scores: torch.Tensor) -> torch.Tensor:
        """Psi(Theta(A)^T)^T on the last two axes (queries, keys) = W_psi A W_theta^T."""
        return self.psi(self.theta(scores).transpose(-2, -1)).transpose(-2, -1)

    def forward(self, x: torch.Tensor, grid: WindowGrid,
                previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, windows, N, C); previous: the scores of the layer before (B, windows, heads, N, N)."""
        b, nw, n, c = x.shape
        scores = _zero_padded_pairs(self.transform(previous), grid)
        v = self.v(x).view(b, nw, n, self.num_heads, c // self.num_heads).transpose(2, 3)
        return self.proj(_attend(scores, v, grid)), scores


class AttentionResidual(nn.Module):
    """Stage m-1's last scores -> a residual for stage m's first VA scores: a depthwise 2x2 stride-2
    convolution over the query and key token grids (``weight`` (heads, 2, 2, 2, 2): query dy, dx, key dy,
    dx), a 1x1 convolution mixing the heads (``head_mix``), and a per-head LayerScale. See the module
    docstring for how windows of the two stages line up."""

    def __init__(self, in_heads: int, out_heads: int, layer_scale: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.full((in_heads, 2, 2, 2, 2), 1.0 / 16))  # mean of the child pairs
        self.bias = nn.Parameter(torch.zeros(in_heads))
        self.head_mix = nn.Linear(in_heads, out_heads)
        self.layer_scale = nn.Parameter(torch.full((out_heads,), float(layer_scale)))

    def forward(self, previous: torch.Tensor, previous_grid: WindowGrid, grid: WindowGrid) -> torch.Tensor:
        """previous (B, windows of stage m-1, heads_(m-1), N', N') -> (B, windows of stage m, heads_m, N, N)."""
        b, _, heads, _, _ = previous.shape
        half = previous_grid.size // 2
        s = previous.reshape(b, previous_grid.rows, previous_grid.cols, heads, half, 2, half, 2, half, 2, half, 2)
        s = torch.einsum("nYXhpaqbrcsd,habcd->nYXhpqrs", s, self.weight.to(s.dtype))
        s = s + self.bias.to(s.dtype).view(heads, 1, 1, 1, 1)
        s = self.head_mix(s.movedim(3, -1)) * self.layer_scale  # 1x1 conv over heads, LayerScale
        s = s.movedim(-1, 3)  # (B, rows', cols', heads_m, half, half, half, half)

        # Each stage-m window spans r x r blocks of parent tokens (r = 2 in windows, 1 in the global form).
        r = grid.size // half
        blocks = s.new_zeros((b, grid.rows * r, grid.cols * r) + s.shape[3:])
        blocks[:, : previous_grid.rows, : previous_grid.cols] = s
        blocks = blocks.view(b, grid.rows, r, grid.cols, r, *s.shape[3:])
        out = s.new_zeros((b, grid.rows, grid.cols, s.shape[3]) + (r, half) * 4)
        for y in range(r):
            for x in range(r):
                out[:, :, :, :, y, :, x, :, y, :, x, :] = blocks[:, :, y, :, x]
        n = grid.size * grid.size
        return out.reshape(b, grid.rows * grid.cols, s.shape[3], n, n)


def diagonality_preserving_loss(scores: torch.Tensor, pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean_(i,j) |A_ij - A_ji| + mean_(i != j) max(0, A_ij - A_ii) over (..., N, N) scores, in float32.
    ``pair_mask`` (broadcastable to scores, bool) restricts both means to the valid token pairs."""
    scores = scores.float()
    asymmetry = (scores - scores.transpose(-2, -1)).abs()
    excess = (scores - scores.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)).clamp(min=0)  # 0 on the diagonal
    n = scores.shape[-1]
    if pair_mask is None:
        pairs = asymmetry.numel()
        off_diagonal = pairs - pairs // n
        return asymmetry.sum() / pairs + excess.sum() / max(off_diagonal, 1)
    mask = pair_mask.expand_as(scores)
    pairs = mask.sum()
    diagonal = mask.diagonal(dim1=-2, dim2=-1).sum()
    return (asymmetry * mask).sum() / pairs.clamp(min=1) + (excess * mask).sum() / (pairs - diagonal).clamp(min=1)


class Downsample(nn.Module):
    """Conv k=2 s=2 between stages (C -> 2C), LayerNorm; odd maps are zero-padded to even first."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.permute(0, 3, 1, 2), (0, x.shape[2] % 2, 0, x.shape[1] % 2))
        return self.norm(self.reduction(x).permute(0, 2, 3, 1))


class LaViTBlock(nn.Module):
    """Pre-norm block around a VA or an LA layer; returns the new x and the layer's kept scores."""

    def __init__(self, dim: int, num_heads: int, less_attention: bool, num_tokens: int, mlp_ratio: float,
                 qkv_bias: bool, drop_path: float):
        super().__init__()
        self.less_attention = less_attention
        self.norm1 = nn.LayerNorm(dim)
        if less_attention:
            self.attn = LessAttention(dim, num_heads, num_tokens, qkv_bias)
        else:
            self.attn = VanillaAttention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, grid: WindowGrid,
                scores: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``scores``: the previous layer's scores for an LA layer, the attention residual (or None) for VA."""
        out, scores = self.attn(to_windows(self.norm1(x), grid), grid, scores)
        x = x + self.drop_path(from_windows(out, grid))
        return x + self.drop_path(self.mlp(self.norm2(x))), scores


class LaViTStage(nn.Module):
    """[Downsample], then ``va_depth`` VA blocks and LA blocks in windows of ``window_size``; stage m > 0
    adds the attention residual from stage m-1's last scores to its first VA scores."""

    def __init__(self, in_dim: Optional[int], dim: int, depth: int, va_depth: int, num_heads: int,
                 previous_heads: Optional[int], window_size: int, mlp_ratio: float, qkv_bias: bool,
                 drop_path: Sequence[float], ar_layer_scale: float):
        super().__init__()
        self.window_size = window_size
        self.downsample = Downsample(in_dim, dim) if in_dim is not None else None
        self.attn_residual = (
            AttentionResidual(previous_heads, num_heads, ar_layer_scale) if previous_heads is not None else None
        )
        self.blocks = nn.ModuleList(
            LaViTBlock(dim, num_heads, i >= va_depth, window_size * window_size, mlp_ratio, qkv_bias, drop_path[i])
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, previous: Optional[tuple[torch.Tensor, WindowGrid]],
                with_dp_loss: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, WindowGrid], list[torch.Tensor]]:
        """x (B, H, W, C); previous: (scores, grid) of stage m-1's last layer. Returns x, this stage's last
        (scores, grid), and the DP loss of each LA layer (when asked for)."""
        if self.downsample is not None:
            x = self.downsample(x)
        grid = window_grid(x.shape[1], x.shape[2], self.window_size, x.device)
        scores = None
        if self.attn_residual is not None:
            scores = self.attn_residual(previous[0], previous[1], grid)
        dp_losses = []
        for block in self.blocks:
            x, scores = run_block(block, x, grid, scores)
            if with_dp_loss and block.less_attention:
                dp_losses.append(diagonality_preserving_loss(scores, grid.pair_mask))
        return x, (scores, grid), dp_losses


def stage_window_sizes(window_size: int, global_attention: bool, pretrain_img_size: int, patch_size: int,
                       num_stages: int) -> list[int]:
    """Window side per stage: ``window_size`` everywhere, or (global form) the whole map at
    ``pretrain_img_size``. Checks what the attention residual needs between stages."""
    if global_attention:
        sizes = [pretrain_img_size // patch_size]
        for _ in range(num_stages - 1):
            sizes.append(math.ceil(sizes[-1] / 2))
    else:
        sizes = [window_size] * num_stages
    for m in range(1, num_stages):
        previous, size = sizes[m - 1], sizes[m]
        if previous % 2 or size % (previous // 2):
            what = f"PRETRAIN_IMG_SIZE {pretrain_img_size} (maps {sizes})" if global_attention else \
                f"WINDOW_SIZE {window_size}"
            raise ValueError(
                f"MODEL.LAVIT: {what} does not fit the attention residual between stages {m - 1} and {m}: a "
                f"stage's window side must be even and the next stage's a multiple of half of it"
            )
    return sizes


class LaViT(MultiScaleBackbone):
    """Hierarchical ViT with VA and LA layers, attention residuals and the DP loss (module docstring).
    Outputs res2..res5 (strides p, 2p, 4p, 8p) as NCHW tensors; in training, ``training_losses()`` then
    holds ``loss_lavit_dp`` (dp_loss_weight x the sum over LA layers)."""

    checkpoint_blocks = r"layers\.\d+\.blocks\.\d+"

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 va_depths: Sequence[int] = (1, 1, 2, 1), num_heads: Sequence[int] = (3, 6, 12, 24),
                 patch_size: int = 4, window_size: int = 8, global_attention: bool = False,
                 pretrain_img_size: int = 224, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.2, ar_layer_scale: float = 0.1, dp_loss_weight: float = 1.0,
                 in_chans: int = 3, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        depths, va_depths, num_heads = list(depths), list(va_depths), list(num_heads)
        for key, values in (("VA_DEPTHS", va_depths), ("NUM_HEADS", num_heads)):
            if len(values) != len(depths):
                raise ValueError(f"MODEL.LAVIT.{key} {values} must have one entry per stage of DEPTHS {depths}")
        for m, (va, depth) in enumerate(zip(va_depths, depths)):
            if not 1 <= va <= depth:
                raise ValueError(f"MODEL.LAVIT.VA_DEPTHS[{m}] = {va} must be between 1 and DEPTHS[{m}] = {depth} "
                                 "(a stage starts with a VA layer: LA layers transform earlier scores)")
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        for m, (dim, heads) in enumerate(zip(self.num_features, num_heads)):
            if dim % heads:
                raise ValueError(f"MODEL.LAVIT: stage {m} has {dim} channels, not divisible by "
                                 f"NUM_HEADS[{m}] = {heads}")
        self.patch_size = patch_size
        self.window_sizes = stage_window_sizes(window_size, global_attention, pretrain_img_size, patch_size,
                                               len(depths))
        self.dp_loss_weight = dp_loss_weight
        self.out_indices = tuple(out_indices)
        self._dp_loss: Optional[torch.Tensor] = None

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList()
        for m, depth in enumerate(depths):
            self.layers.append(LaViTStage(
                self.num_features[m - 1] if m else None, self.num_features[m], depth, va_depths[m], num_heads[m],
                num_heads[m - 1] if m else None, self.window_sizes[m], mlp_ratio, qkv_bias, rates[m],
                ar_layer_scale,
            ))
        self._add_output_norms(self.out_indices, self.num_features)
        self._set_outputs(self.out_indices, self.num_features, [patch_size * 2 ** i for i in range(len(depths))])

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with_dp_loss = self.training and self.dp_loss_weight > 0
        x = self.patch_embed(x)
        outputs, previous, dp_losses = {}, None, []
        for i, stage in enumerate(self.layers):
            x, previous, stage_losses = stage(x, previous, with_dp_loss)
            dp_losses += stage_losses
            if i in self.out_indices:
                outputs[FEATURE_NAMES[i]] = self._output_norm(i, x)
        self._dp_loss = torch.stack(dp_losses).sum() if dp_losses else None
        return outputs

    def training_losses(self) -> dict[str, torch.Tensor]:
        """The weighted DP loss of the last forward pass in training (empty in eval or with weight 0)."""
        if self._dp_loss is None:
            return {}
        return {"loss_lavit_dp": self.dp_loss_weight * self._dp_loss}


@BACKBONE_REGISTRY.register()
class D2LaViT(LaViT):
    """LaViT configured by MODEL.LAVIT.* (and MODEL.BACKBONE.ACTIVATION_CHECKPOINTING). Also constructible
    from LaViT's own keyword arguments (plus ``out_features`` and ``activation_checkpointing``), which is what
    ``from_reference_config`` does."""

    @configurable
    def __init__(self, *, out_features: Sequence[str] = FEATURE_NAMES, activation_checkpointing: bool = False,
                 **kwargs):
        super().__init__(out_indices=out_feature_indices(out_features, "MODEL.LAVIT.OUT_FEATURES"), **kwargs)
        self.activation_checkpointing = activation_checkpointing

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        c = cfg.MODEL.LAVIT
        return dict(
            embed_dim=c.EMBED_DIM, depths=c.DEPTHS, va_depths=c.VA_DEPTHS, num_heads=c.NUM_HEADS,
            patch_size=c.PATCH_SIZE, window_size=c.WINDOW_SIZE, global_attention=c.GLOBAL_ATTENTION,
            pretrain_img_size=c.PRETRAIN_IMG_SIZE, mlp_ratio=c.MLP_RATIO, qkv_bias=c.QKV_BIAS,
            drop_path_rate=c.DROP_PATH_RATE, ar_layer_scale=c.AR_LAYER_SCALE, dp_loss_weight=c.DP_LOSS_WEIGHT,
            in_chans=input_shape.channels, out_features=c.OUT_FEATURES,
            activation_checkpointing=cfg.MODEL.BACKBONE.ACTIVATION_CHECKPOINTING,
        )


def from_reference_config(config: dict) -> D2LaViT:
    """D2LaViT from LaViT's constructor arguments. No reference implementation of LaViT exists, so these
    are the paper-level arguments of this module's ``LaViT`` (embed_dim, depths, va_depths, num_heads,
    patch_size, window_size, global_attention, pretrain_img_size, mlp_ratio, qkv_bias, drop_path_rate,
    ar_layer_scale, dp_loss_weight, in_chans), plus ``out_features``."""
    return D2LaViT(**config)


def build_variant(name: str, **overrides) -> D2LaViT:
    """One of this project's LaViT sizes (``VARIANTS``), with optional argument overrides."""
    return D2LaViT(**{**lookup_variant(VARIANTS, name, "LaViT"), **overrides})
