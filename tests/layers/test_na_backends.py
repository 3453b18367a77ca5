"""Every neighborhood-attention backend gives the reference numbers; selection and overrides."""
import logging

import pytest
import torch

from dinat_m2f.layers import na2d, na2d_reference, na_backend, select_backend
from dinat_m2f.layers.neighborhood_attention import dispatch, flex as na_flex
from dinat_m2f.layers.neighborhood_attention.natten import natten_na2d

# torch 2.5 cannot build our BlockMask; torch 2.7's CPU FlexAttention kernel does not compile (flex_unavailable)
FLEX_CPU = na_flex.flex_unavailable("cpu")
FLEX_ANY = na_flex.flex_unavailable("cuda")
needs_cpu_flex = pytest.mark.skipif(FLEX_CPU is not None, reason=str(FLEX_CPU))
needs_flex_block_mask = pytest.mark.skipif(FLEX_ANY is not None, reason=str(FLEX_ANY))


@pytest.fixture
def flex_runs(monkeypatch):
    """Backend selection as on a torch that runs flex everywhere (selection only: nothing is run)."""
    monkeypatch.setattr(na_flex, "_BLOCK_MASK_TAKES_SEQ_LENGTHS", True)
    monkeypatch.setattr(na_flex, "_CPU_KERNEL_COMPILES", True)


def _case(device="cpu", dtype=torch.float32, shape=(1, 2, 12, 13, 16), kernel=3, dilation=2, rpb=True):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    bias = torch.randn(shape[1], 2 * kernel - 1, 2 * kernel - 1, generator=gen).to(device, dtype) if rpb else None
    return q, k, v, kernel, dilation, bias


def _reference(q, k, v, kernel, dilation, rpb):
    as64 = [t.double().cpu() for t in (q, k, v)]
    return na2d_reference(*as64, kernel, dilation, None if rpb is None else rpb.double().cpu())


@needs_cpu_flex
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 6e-2)])
def test_flex_backend_forward_matches_reference_on_cpu(dtype, atol):
    # FlexAttention compiles its forward on CPU (no backward there); one small shape keeps this quick.
    q, k, v, kernel, dilation, rpb = _case(dtype=dtype)
    with torch.no_grad():
        out = na2d(q, k, v, kernel, dilation, rpb, backend="flex")
    assert out.dtype == dtype
    assert (out.double() - _reference(q, k, v, kernel, dilation, rpb)).abs().max() < atol


def test_tiled_backend_matches_reference_on_cpu():
    q, k, v, kernel, dilation, rpb = _case(shape=(2, 3, 23, 19, 8), kernel=5, dilation=3)
    out = na2d(q, k, v, kernel, dilation, rpb, backend="tiled")
    assert (out.double() - _reference(q, k, v, kernel, dilation, rpb)).abs().max() < 1e-5


@needs_cpu_flex
def test_flex_backend_serves_many_map_sizes_with_few_compilations():
    # Evaluation images all differ in size and layers in dilation; past dynamo's recompile limit (8)
    # FlexAttention would fall back to its unfused path, which holds all (H*W)^2 scores.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    sizes = [(24, 32), (25, 38), (30, 40), (32, 48), (40, 40), (36, 50), (44, 44), (48, 52), (50, 60), (52, 64)]
    for number, (height, width) in enumerate(sizes):
        q, k, v, kernel, dilation, rpb = _case(shape=(1, 2 + number % 2, height, width, 16), kernel=5,
                                               dilation=1 + number % 3)
        with torch.no_grad():
            out = na2d(q, k, v, kernel, dilation, rpb, backend="flex")
        torch.testing.assert_close(out, na2d(q, k, v, kernel, dilation, rpb, backend="tiled"), atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] <= 3


@needs_flex_block_mask
@pytest.mark.parametrize("height,width,kernel,dilation", [(40, 52, 11, 3), (64, 64, 11, 5), (20, 20, 11, 1)])
def test_flex_block_mask_query_blocks_match_flex_attentions_own(height, width, kernel, dilation):
    # The backward pass walks the query blocks of each key block; ours are precomputed, so check them against
    # what FlexAttention derives itself (only the first q_num_blocks entries of a row are read).
    from torch.nn.attention.flex_attention import BlockMask

    from dinat_m2f.layers.neighborhood_attention.flex import _block_mask

    ours = _block_mask(height, width, kernel, dilation, torch.device("cpu"))
    theirs = BlockMask.from_kv_blocks(ours.kv_num_blocks, ours.kv_indices, BLOCK_SIZE=128,
                                      seq_lengths=(height * width,) * 2)
    assert torch.equal(ours.q_num_blocks, theirs.q_num_blocks)
    for row, count in enumerate(ours.q_num_blocks[0, 0].tolist()):
        assert torch.equal(ours.q_indices[0, 0, row, :count], theirs.q_indices[0, 0, row, :count])


@needs_flex_block_mask
def test_flex_block_pairs_visited_by_dinat_l_at_800x1216():
    # FlexAttention does one block product per (query block, key block) pair it visits: the tile layout decides
    # the work. Exact work is heads * H * W * k^2 scores per layer; 16x8 tiles visit 7.1x that over the 30
    # layers (8x16 tiles: 8.0x, 4x32: 9.8x), so a layout regression shows here.
    from dinat_m2f.config import load_project_config
    from dinat_m2f.layers.neighborhood_attention.flex import BLOCK, _block_mask

    cfg = load_project_config("configs/coco/panoptic/dinat_l.yaml")
    kernel = cfg.MODEL.DINAT.KERNEL_SIZE
    visited = exact = 0
    for stage, (dilations, heads) in enumerate(zip(cfg.MODEL.DINAT.DILATIONS, cfg.MODEL.DINAT.NUM_HEADS)):
        height, width = 800 // 4 >> stage, 1216 // 4 >> stage
        for dilation in dilations:
            kv_num_blocks = _block_mask(height, width, kernel, dilation, torch.device("cpu")).kv_num_blocks
            visited += heads * kv_num_blocks.sum().item() * BLOCK * BLOCK
            exact += heads * height * width * kernel * kernel
    assert visited / exact < 7.2


NATTEN = natten_na2d() is not None


@pytest.mark.skipif(not NATTEN, reason="needs NATTEN >= 0.20")
@pytest.mark.parametrize("shape,kernel,dilation", [((1, 2, 29, 31, 32), 7, 3), ((2, 3, 11, 24, 16), 11, 1),
                                                   ((1, 1, 23, 23, 8), 5, 4)])
def test_natten_backend_forward_matches_reference_on_cpu(shape, kernel, dilation):
    # NATTEN's CPU path is forward-only (FlexAttention underneath); it checks our layout and window rule.
    q, k, v, kernel, dilation, _ = _case(shape=shape, kernel=kernel, dilation=dilation, rpb=False)
    with torch.no_grad():
        out = na2d(q, k, v, kernel, dilation, None, backend="natten")
        tiled = na2d(q, k, v, kernel, dilation, None, backend="tiled")
    assert (out.double() - _reference(q, k, v, kernel, dilation, None)).abs().max() < 1e-5
    assert (out - tiled).abs().max() < 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["tiled", "flex", "natten"])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
def test_cuda_backends_forward_and_backward_match_reference(backend, dtype, atol):
    if backend == "natten" and not NATTEN:
        pytest.skip("needs NATTEN >= 0.20")
    q, k, v, kernel, dilation, rpb = _case("cuda", dtype, shape=(2, 2, 29, 31, 32), kernel=7, dilation=3,
                                           rpb=backend != "natten")  # NATTEN's fused kernels have no RPB
    leaves = [t.requires_grad_(True) for t in (q, k, v) + ((rpb,) if rpb is not None else ())]
    out = na2d(*leaves[:3], kernel, dilation, *leaves[3:], backend=backend)
    ref_leaves = [t.detach().double().cpu().requires_grad_(True) for t in leaves]
    ref = na2d_reference(*ref_leaves[:3], kernel, dilation, *ref_leaves[3:])
    assert (out.double().cpu() - ref).abs().max() < atol
    grad = torch.randn_like(ref)
    grads = torch.autograd.grad((out * grad.to("cuda", dtype)).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * grad).sum(), ref_leaves)
    for g, rg in zip(grads, ref_grads):
        assert ((g.double().cpu() - rg).norm() / rg.norm()) < (1e-4 if dtype == torch.float32 else 3e-2)


def test_automatic_choice_and_overrides(monkeypatch, caplog, flex_runs):
    q, _, _, _, _, rpb = _case()
    assert select_backend(q, rpb, 0.0, kernel_size=3, dilation=2) == "tiled"  # CPU
    with na_backend("flex"):
        assert select_backend(q, rpb, 0.0, kernel_size=3, dilation=2) == "flex"
        assert select_backend(q, rpb, 0.0, "tiled", kernel_size=3, dilation=2) == "tiled"  # the argument wins
    monkeypatch.setenv("DINAT_M2F_NA_BACKEND", "flex")
    assert select_backend(q, rpb, 0.0, kernel_size=3, dilation=2) == "flex"
    monkeypatch.setenv("DINAT_M2F_NA_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"unknown neighborhood attention backend 'fast'"):
        select_backend(q, rpb, 0.0, kernel_size=3, dilation=2)
    with pytest.raises(ValueError, match="unknown neighborhood attention backend 'cuda'"):
        with na_backend("cuda"):
            pass


@pytest.mark.parametrize("device,dtype,head_dim,rpb,dropout,natten,expected", [
    ("cpu", torch.float32, 32, True, 0.0, True, "tiled"),
    ("cpu", torch.bfloat16, 32, False, 0.0, True, "tiled"),  # NATTEN's CPU path holds all scores
    ("cuda", torch.bfloat16, 32, True, 0.0, True, "flex"),  # NATTEN has no RPB
    ("cuda", torch.float32, 32, True, 0.0, False, "flex"),
    ("cuda", torch.bfloat16, 32, False, 0.0, True, "natten"),
    ("cuda", torch.bfloat16, 32, False, 0.0, False, "flex"),
    ("cuda", torch.float64, 32, True, 0.0, False, "tiled"),
    ("cuda", torch.bfloat16, 32, True, 0.1, False, "tiled"),  # attention dropout
    ("cuda", torch.bfloat16, 8, True, 0.0, False, "tiled"),  # below FlexAttention's smallest head dim
])
def test_automatic_backend_by_device_dtype_shape_and_availability(monkeypatch, flex_runs, device, dtype, head_dim,
                                                                  rpb, dropout, natten, expected):
    # Fake tensors carry a CUDA device without a GPU: the rules are checked on any machine.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dinat_m2f.layers.neighborhood_attention import natten as natten_backend

    monkeypatch.setattr(natten_backend, "natten_na2d", lambda: object() if natten else None)
    with FakeTensorMode():
        q = torch.empty(1, 2, 12, 12, head_dim, device=device, dtype=dtype)
        bias = torch.empty(2, 5, 5, device=device, dtype=dtype) if rpb else None
        assert dispatch.automatic_backend(q, bias, dropout, needs_grad=False) == expected
        assert dispatch.automatic_backend(q, bias, dropout, needs_grad=True) == ("tiled" if device == "cpu" else expected)


@pytest.mark.parametrize("natten", [True, False])
def test_automatic_choice_falls_back_where_flex_cannot_run(monkeypatch, natten):
    """On torch 2.5 (no BlockMask seq_lengths) CUDA gets the tiled op, or NATTEN where it would anyway; a forced
    flex says why it cannot run. Where the CPU kernel does not compile (torch 2.7), CUDA still gets flex."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dinat_m2f.layers.neighborhood_attention import natten as natten_backend

    def automatic(dtype, rpb):
        with FakeTensorMode():  # a CUDA device without a GPU: only the rules are checked
            q = torch.empty(1, 2, 12, 12, 32, device="cuda", dtype=dtype)
            bias = torch.empty(2, 5, 5, device="cuda", dtype=dtype) if rpb else None
            return dispatch.automatic_backend(q, bias, 0.0, needs_grad=True)

    monkeypatch.setattr(natten_backend, "natten_na2d", lambda: object() if natten else None)
    monkeypatch.setattr(na_flex, "_BLOCK_MASK_TAKES_SEQ_LENGTHS", False)
    assert automatic(torch.bfloat16, rpb=True) == "tiled"
    assert automatic(torch.float32, rpb=False) == ("natten" if natten else "tiled")
    q, k, v, kernel, dilation, rpb = _case()
    with pytest.raises(ValueError, match=r"backend 'flex' cannot run here: torch .*BlockMask takes no seq_lengths"):
        na2d(q, k, v, kernel, dilation, rpb, backend="flex")

    monkeypatch.setattr(na_flex, "_BLOCK_MASK_TAKES_SEQ_LENGTHS", True)
    monkeypatch.setattr(na_flex, "_CPU_KERNEL_COMPILES", False)
    assert automatic(torch.bfloat16, rpb=True) == "flex"
    with torch.no_grad(), pytest.raises(ValueError, match=r"backend 'flex' cannot run here: .*no CPU FlexAttention"):
        na2d(q, k, v, kernel, dilation, rpb, backend="flex")


def test_flex_availability_of_this_torch():
    """What flex_unavailable reads from torch itself: BlockMask's signature and the version."""
    import inspect

    from torch.nn.attention.flex_attention import BlockMask
    from torch.torch_version import TorchVersion

    takes_seq_lengths = "seq_lengths" in inspect.signature(BlockMask.__init__).parameters
    assert takes_seq_lengths == (TorchVersion(torch.__version__) >= "2.6")
    assert (FLEX_ANY is None) == takes_seq_lengths
    assert (FLEX_CPU is None) == (TorchVersion(torch.__version__) >= "2.8")


def test_unusable_forced_backends_are_clear_errors():
    q, k, v, kernel, dilation, rpb = _case()
    q.requires_grad_(True)
    with pytest.raises(ValueError, match="no backward on CPU"):
        na2d(q, k, v, kernel, dilation, rpb, backend="flex")
    with pytest.raises(ValueError, match="backend 'natten' needs"):
        na2d(q, k, v, kernel, dilation, rpb, backend="natten")
    if NATTEN:  # installed, no RPB, but a backward is asked for on CPU
        with pytest.raises(ValueError, match="backend 'natten' has no attention dropout, and no backward on CPU"):
            na2d(q, k, v, kernel, dilation, None, backend="natten")


def test_choice_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_logged_choices", set())  # forget earlier tests' choices
    q, k, v, kernel, dilation, rpb = _case(dtype=torch.float16)
    with caplog.at_level(logging.INFO, logger="dinat_m2f.layers.neighborhood_attention"):
        na2d(q, k, v, kernel, dilation, rpb)
        na2d(q, k, v, kernel, dilation, rpb)
    messages = [r.getMessage() for r in caplog.records if "backend" in r.getMessage()]
    assert messages == ["neighborhood attention backend: tiled (cpu, torch.float16)"]


def test_tiled_reads_views_of_a_qkv_tensor_as_packed_rows():
    """q, k, v as NeighborhoodAttention2D makes them (views into one qkv tensor, positions 3 * C apart) give the
    results and gradients of packed copies."""
    from dinat_m2f.layers import na2d

    torch.manual_seed(0)
    qkv = torch.randn(1, 23, 29, 3, 2, 8, requires_grad=True)
    rpb = torch.randn(2, 9, 9, requires_grad=True)
    q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
    assert not k.is_contiguous()
    out = na2d(q, k, v, 5, 2, rpb, backend="tiled")
    packed = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    expected = na2d(*packed, 5, 2, rpb, backend="tiled")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn_like(out)
    (grad_qkv,) = torch.autograd.grad(out, qkv, grad)
    expected_grads = torch.autograd.grad(expected, packed, grad)
    torch.testing.assert_close(grad_qkv.permute(3, 0, 4, 1, 2, 5).unbind(0), expected_grads)
