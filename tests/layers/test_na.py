"""Neighborhood attention: the window rule against the spec, NATTEN 0.17.5 fixture numbers, the gather-based
reference, precision, bad input."""
import random

import pytest
import torch

from dinat_m2f.layers import NeighborhoodAttention2D, na2d, na2d_reference
from dinat_m2f.layers.neighborhood_attention.window import axis_neighbors


# --- the window rule, written again from the spec's absolute-coordinate rules (section 1.4 / 2) ----------

def _axis_neighbors(length: int, k: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(length, k) key positions and RPB slots for each query of one axis."""
    ns = k // 2
    keys, slots = [], []
    for i in range(length):
        r = i % d
        if i - ns * d < 0:
            start = r
        elif i + ns * d >= length:
            a = (length // d) * d
            b = length - a
            start = length - b + r - 2 * ns * d if r < b else a + r - k * d
        else:
            start = i - ns * d
        row = [start + n * d for n in range(k)]
        keys.append(row)
        slots.append([(k - 1) + (key - i) // d for key in row])
    return torch.tensor(keys), torch.tensor(slots)


def test_window_rule_matches_the_spec_absolute_coordinate_rules():
    # window.py (group coordinates, shared by every backend and na2d_reference) against the spec's other form.
    for k in range(3, 16, 2):
        for d in range(1, 9):
            for length in range(k * d, k * d + 3 * d + 5):
                keys, slots = axis_neighbors(length, k, d)
                expected_keys, expected_slots = _axis_neighbors(length, k, d)
                assert torch.equal(keys, expected_keys) and torch.equal(slots, expected_slots), (length, k, d)


def _random_case(rng: random.Random, dtype=torch.float64):
    k = rng.choice([3, 5, 7, 9, 11, 13])
    d = rng.randint(1, 5)
    height = rng.randint(k * d, k * d + 2 * d + 3)
    width = rng.randint(k * d, k * d + 2 * d + 3)
    b, heads, dim = rng.randint(1, 2), rng.randint(1, 3), rng.choice([2, 4, 8])
    gen = torch.Generator().manual_seed(rng.randint(0, 2**31))
    q, kk, v = (torch.randn(b, heads, height, width, dim, generator=gen, dtype=dtype) for _ in range(3))
    rpb = torch.randn(heads, 2 * k - 1, 2 * k - 1, generator=gen, dtype=dtype) if rng.random() < 0.7 else None
    return q, kk, v, k, d, rpb


# --- the spec's worked examples ------------------------------------------------------------------------

@pytest.mark.parametrize("length,dilation,expected_keys", [
    (7, 1, [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [4, 5, 6]]),
    (10, 3, [[0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [3, 6, 9], [1, 4, 7],
             [2, 5, 8], [3, 6, 9]]),
])
def test_reference_rules_match_spec_examples(length, dilation, expected_keys):
    keys, _ = _axis_neighbors(length, 3, dilation)
    assert keys.tolist() == expected_keys
    assert axis_neighbors(length, 3, dilation)[0].tolist() == expected_keys


def test_one_hot_values_pick_exactly_the_spec_neighbors():
    # L=10, d=3 (unequal groups): with v = one-hot of the key position and uniform logits, the output of
    # each query is 1/9 on exactly its 3x3 neighbors of the spec's example (d).
    length, k, d = 10, 3, 3
    v = torch.eye(length * length, dtype=torch.float64).view(1, 1, length, length, length * length)
    q = torch.zeros(1, 1, length, length, length * length, dtype=torch.float64)
    out = na2d(q, q.clone(), v, k, d).view(length, length, length, length)
    keys, _ = _axis_neighbors(length, k, d)
    for i in range(length):
        for j in range(length):
            expected = torch.zeros(length, length, dtype=torch.float64)
            expected[keys[i][:, None], keys[j][None, :]] = 1 / 9
            torch.testing.assert_close(out[i, j], expected, rtol=0, atol=1e-12)


# --- NATTEN fixture numbers -----------------------------------------------------------------------------

def test_op_cases_match_natten_forward_and_gradients(na_reference):
    cases = [c for c in na_reference["cases"] if c["kind"] == "op"]
    assert len(cases) >= 5
    for case in cases:
        q, k, v = (case[n].clone().requires_grad_(True) for n in "qkv")
        rpb = None if case["rpb"] is None else case["rpb"].clone().requires_grad_(True)
        out = na2d(q, k, v, case["kernel_size"], case["dilation"], rpb)
        (out * case["grad_out"]).sum().backward()
        label = f"shape {tuple(q.shape)} k={case['kernel_size']} d={case['dilation']}"
        assert (out - case["out"]).abs().max() < 1e-10, label
        for name, tensor in (("q", q), ("k", k), ("v", v)):
            assert (tensor.grad - case[f"grad_{name}"]).abs().max() < 1e-10, f"grad_{name} {label}"
        if rpb is not None:
            assert (rpb.grad - case["grad_rpb"]).abs().max() < 1e-10, f"grad_rpb {label}"


def test_reference_matches_natten_forward_and_gradients(na_reference):
    # na2d_reference is the brute force of the other tests: it must be exact itself.
    for case in [c for c in na_reference["cases"] if c["kind"] == "op"]:
        q, k, v = (case[n].clone().requires_grad_(True) for n in "qkv")
        rpb = None if case["rpb"] is None else case["rpb"].clone().requires_grad_(True)
        out = na2d_reference(q, k, v, case["kernel_size"], case["dilation"], rpb, rows_per_chunk=3)
        (out * case["grad_out"]).sum().backward()
        label = f"shape {tuple(q.shape)} k={case['kernel_size']} d={case['dilation']}"
        assert (out - case["out"]).abs().max() < 1e-10, label
        for name, tensor in (("q", q), ("k", k), ("v", v)) + ((("rpb", rpb),) if rpb is not None else ()):
            assert (tensor.grad - case[f"grad_{name}"]).abs().max() < 1e-10, f"grad_{name} {label}"


def test_module_cases_match_natten_including_padded(na_reference):
    cases = [c for c in na_reference["cases"] if c["kind"] == "module"]
    padded = [c for c in cases if min(c["x"].shape[1:3]) < c["kernel_size"] * c["dilation"]]
    assert padded, "the fixture has a case smaller than kernel_size*dilation"
    for case in cases:
        module = NeighborhoodAttention2D(case["dim"], case["num_heads"], case["kernel_size"], case["dilation"])
        module = module.double().eval()
        module.load_state_dict(case["state_dict"], strict=True)
        out = module(case["x"])
        assert out.shape == case["x"].shape
        assert (out - case["out"]).abs().max() < 1e-10


def test_module_float32_within_tolerance(na_reference):
    for case in [c for c in na_reference["cases"] if c["kind"] == "module"]:
        module = NeighborhoodAttention2D(case["dim"], case["num_heads"], case["kernel_size"], case["dilation"])
        module.load_state_dict({k: v.float() for k, v in case["state_dict"].items()})
        out = module.eval()(case["x"].float())
        assert (out.double() - case["out"]).abs().max() < 1e-4


# --- randomized comparisons against the gather-based reference ------------------------------------------------------

def test_random_shapes_match_brute_force_forward_and_backward():
    rng = random.Random(1234)
    for _ in range(40):
        q, k, v, kernel, dilation, rpb = _random_case(rng)
        leaves = [t.requires_grad_(True) for t in (q, k, v) + ((rpb,) if rpb is not None else ())]
        out = na2d(q, k, v, kernel, dilation, rpb)
        ref = na2d_reference(q, k, v, kernel, dilation, rpb)
        label = f"shape {tuple(q.shape)} k={kernel} d={dilation} rpb={rpb is not None}"
        assert (out - ref).abs().max() < 1e-10, label
        grad_out = torch.randn_like(out)
        grads = torch.autograd.grad((out * grad_out).sum(), leaves)
        ref_grads = torch.autograd.grad((ref * grad_out).sum(), leaves)
        for g, rg in zip(grads, ref_grads):
            assert (g - rg).abs().max() < 1e-10, label


# Inputs are rounded to the dtype first, so the tolerance covers the op's own rounding: half-precision
# logits (|logit| up to ~10 here) carry about 2^-8 (bf16) or 2^-11 (fp16) relative error.
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 6e-2), (torch.float16, 1e-2)])
def test_reduced_precision_within_dtype_tolerance(dtype, atol):
    rng = random.Random(7)
    for _ in range(6):
        q, k, v, kernel, dilation, rpb = _random_case(rng)
        cast = [t.to(dtype) for t in (q, k, v)]
        rpb = None if rpb is None else rpb.to(dtype)
        ref = na2d_reference(*[t.double() for t in cast], kernel, dilation, None if rpb is None else rpb.double())
        out = na2d(*cast, kernel, dilation, rpb)
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        assert (out.double() - ref).abs().max() < atol


def test_bfloat16_gradients_are_close_to_float64():
    rng = random.Random(11)
    q, k, v, kernel, dilation, rpb = _random_case(rng)
    rpb = torch.randn(q.shape[1], 2 * kernel - 1, 2 * kernel - 1, dtype=torch.float64)
    grad_out = torch.randn_like(q)
    ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v, rpb)]
    ref_grads = torch.autograd.grad((na2d(*ref_leaves[:3], kernel, dilation, ref_leaves[3]) * grad_out).sum(),
                                    ref_leaves)
    bf_leaves = [t.to(torch.bfloat16).requires_grad_(True) for t in (q, k, v, rpb)]
    out = na2d(*bf_leaves[:3], kernel, dilation, bf_leaves[3])
    grads = torch.autograd.grad((out * grad_out.to(torch.bfloat16)).sum(), bf_leaves)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16
        assert ((g.double() - rg).norm() / rg.norm()) < 3e-2


# --- bad input -------------------------------------------------------------------------------------------

def _qkv(shape=(1, 2, 12, 12, 4)):
    return [torch.randn(shape) for _ in range(3)]


@pytest.mark.parametrize("kernel_size,dilation,message", [
    (4, 1, "kernel_size must be an odd integer >= 3, got 4"),
    (1, 1, "kernel_size must be an odd integer >= 3, got 1"),
    (3, 0, "dilation must be an integer >= 1, got 0"),
])
def test_bad_window_is_a_value_error_naming_the_value(kernel_size, dilation, message):
    with pytest.raises(ValueError, match=message):
        na2d(*_qkv(), kernel_size, dilation)
    with pytest.raises(ValueError, match=message):
        NeighborhoodAttention2D(8, 2, kernel_size, dilation)


def test_bad_shapes_are_value_errors_naming_the_argument():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"rpb must have shape .*\(2, 5, 5\).*got \(2, 7, 7\)"):
        na2d(q, k, v, 3, 1, torch.zeros(2, 7, 7))
    with pytest.raises(ValueError, match=r"rpb must have shape .*\(2, 5, 5\).*got \(3, 5, 5\)"):
        na2d(q, k, v, 3, 1, torch.zeros(3, 5, 5))  # head count mismatch
    with pytest.raises(ValueError, match=r"q must have shape \(B, heads, H, W, D\), got a 4-d tensor"):
        na2d(q[0], k, v, 3)
    with pytest.raises(ValueError, match="same shape"):
        na2d(q, k[:, :1], v, 3)
    with pytest.raises(ValueError, match=r"kernel_size \* dilation = 5 \* 3 = 15, got H=12, W=12"):
        na2d(q, k, v, 5, 3)
    with pytest.raises(ValueError, match=r"expects \(B, H, W, 8\) input, got \(1, 8, 8, 6\)"):
        NeighborhoodAttention2D(8, 2, 3)(torch.randn(1, 8, 8, 6))
    with pytest.raises(ValueError, match=r"dim \(10\) must be divisible by num_heads \(3\)"):
        NeighborhoodAttention2D(10, 3, 3)


def test_module_parameter_names_and_shapes():
    module = NeighborhoodAttention2D(48, 3, 11, dilation=2)
    shapes = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    assert shapes == {"qkv.weight": (144, 48), "qkv.bias": (144,), "rpb": (3, 21, 21),
                      "proj.weight": (48, 48), "proj.bias": (48,)}
    assert "rpb" not in NeighborhoodAttention2D(48, 3, 11, rel_pos_bias=False).state_dict()


def test_module_pads_small_maps_and_gives_gradients():
    # 5x7 map with k=3, d=3 needs 9x9: padded tokens get q=k=v=qkv.bias, as in NATTEN 0.14.
    module = NeighborhoodAttention2D(8, 2, 3, dilation=3).double()
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 5, 7, 8)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 2, 0, 4))
    qkv = module.qkv(padded).reshape(2, 9, 9, 3, 2, 4).permute(3, 0, 4, 1, 2, 5)
    ref = na2d_reference(qkv[0] * module.scale, qkv[1], qkv[2], 3, 3, module.rpb)
    ref = module.proj(ref.permute(0, 2, 3, 1, 4).reshape(2, 9, 9, 8)[:, :5, :7])
    assert (out - ref).abs().max() < 1e-12
    out.sum().backward()
    assert x.grad is not None and module.rpb.grad.abs().sum() > 0


def test_attention_dropout_only_while_training():
    torch.manual_seed(0)
    module = NeighborhoodAttention2D(8, 2, 3, attn_drop=0.5)
    x = torch.randn(1, 6, 6, 8, requires_grad=True)
    eval_out = module.eval()(x)
    torch.testing.assert_close(module(x), eval_out)
    train_out = module.train()(x)
    assert not torch.allclose(train_out, eval_out)
    train_out.sum().backward()
    assert torch.isfinite(x.grad).all() and module.rpb.grad is not None


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_module_traces_as_one_op():
    # fvcore and exporters trace the model: neighborhood attention must appear as a single traced node.
    module = NeighborhoodAttention2D(16, 2, 3, dilation=2).eval()
    x = torch.randn(1, 10, 11, 16)
    traced = torch.jit.trace(module, x, check_trace=False)
    kinds = [node.kind() for node in traced.inlined_graph.nodes()]
    assert kinds.count("dinat_m2f::na2d_tiled") == 1
    assert not any(kind in ("aten::bmm", "aten::matmul", "aten::softmax") for kind in kinds)
    torch.testing.assert_close(traced(x), module(x))
