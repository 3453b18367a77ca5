"""Neighborhood attention on a CUDA GPU at DiNAT-L's layer shapes: every backend (tiled, flex, and NATTEN's fused
kernels where installed, without RPB) in float32, bfloat16 and float16, forward and backward (q, k, v, rpb),
against the float64 tiled op on the same device, whose numbers the CPU suite checks against NATTEN 0.17.5's.
Shapes: a 29x31 map, then every (stage, dilation) of configs/coco/panoptic/dinat_l.yaml at 800x1333 (no H*W a
multiple of 128: PyTorch issue 153799, NaN in FlexAttention's backward with a block mask and a score_mod at such
lengths) and at 1024x1024 (all multiples of 128). Marked `cuda`: skipped without a GPU; tools/gpu_check.py runs
them (`pytest -m cuda`) and reports each check's relative errors (recorded as junit properties)."""
import functools

import pytest
import torch

from dinat_m2f.config import load_project_config
from dinat_m2f.layers import na2d
from dinat_m2f.layers.neighborhood_attention.flex import flex_unavailable
from dinat_m2f.layers.neighborhood_attention.natten import natten_na2d
from project_paths import CONFIGS

# Relative error ||x - ref|| / ||ref|| allowed per dtype, for the output and every gradient: float32 has room
# for TF32 matrix products (near 3e-4); bf16 operands land between 1e-3 and 1e-2, float16 8x finer.
TOLERANCES = {"float32": 1e-3, "bfloat16": 2e-2, "float16": 5e-3}
BACKENDS = ["tiled", "flex", "natten"]


def stage_maps(height: int, width: int) -> list[tuple[int, int]]:
    """DiNAT's four stage maps for an unpadded input: each 3x3 stride-2 convolution (padding 1) maps n to
    ceil(n / 2), two in the patch embedding, then one per downsampler."""
    sizes = []
    for halvings in (2, 1, 1, 1):
        for _ in range(halvings):
            height, width = -(-height // 2), -(-width // 2)
        sizes.append((height, width))
    return sizes


def cuda_test_cases() -> list[dict]:
    """A small map, then every (stage, dilation) of DiNAT-L's COCO config at 800x1333 and 1024x1024."""
    dinat = load_project_config(str(CONFIGS / "coco" / "panoptic" / "dinat_l.yaml")).MODEL.DINAT
    kernel = dinat.KERNEL_SIZE
    cases = [dict(image="small map", stage=1, height=29, width=31, heads=2, dilation=2, kernel=kernel)]
    for image in [(800, 1333), (1024, 1024)]:
        for stage, (height, width) in enumerate(stage_maps(*image)):
            for dilation in sorted(set(dinat.DILATIONS[stage])):
                if min(height, width) >= kernel * dilation:
                    cases.append(dict(image=f"{image[0]}x{image[1]}", stage=stage + 1, height=height, width=width,
                                      heads=dinat.NUM_HEADS[stage], dilation=dilation, kernel=kernel))
    return cases


CASES = cuda_test_cases()


def _case_id(case: dict) -> str:
    return f"{case['image'].replace(' ', '_')}-s{case['stage']}-{case['height']}x{case['width']}-d{case['dilation']}"


def exact_in_half_types(tensor: torch.Tensor) -> torch.Tensor:
    """Round to bfloat16 and flush what float16 would make subnormal: then the same values are exact in float32,
    bfloat16 and float16, and one float64 reference serves all three dtypes."""
    rounded = tensor.to(torch.bfloat16).double()
    return torch.where(rounded.abs() < 2**-14, torch.zeros_like(rounded), rounded)


def na_outputs(backend: str, inputs: dict, grad_out: torch.Tensor, kernel: int, dilation: int) -> dict:
    """{"out", "grad_q", "grad_k", "grad_v"[, "grad_rpb"]} of na2d with `backend`."""
    leaves = {name: t.detach().requires_grad_(True) for name, t in inputs.items()}
    out = na2d(leaves["q"], leaves["k"], leaves["v"], kernel, dilation, leaves.get("rpb"), backend=backend)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(out.dtype))
    return {"out": out.detach(), **{f"grad_{name}": grad for name, grad in zip(leaves, grads)}}


def relative_errors(results: dict, reference: dict) -> tuple[dict, dict]:
    errors, nonfinite = {}, {}
    for name, value in results.items():
        ref = reference[name].to(value.device)
        nonfinite[name] = int((~torch.isfinite(value)).sum())
        errors[name] = float((value.double() - ref).norm() / ref.norm().clamp_min(1e-300))
    return errors, nonfinite


@functools.lru_cache(maxsize=2)
def _inputs(number: int, device: str) -> tuple[dict, torch.Tensor]:
    """Case `number`'s q, k, v, rpb and output gradient in float64, exact in every half type."""
    case = CASES[number]
    generator = torch.Generator().manual_seed(number)
    shape = (1, case["heads"], case["height"], case["width"], 32)
    side = 2 * case["kernel"] - 1
    inputs = {"q": torch.randn(shape, generator=generator) * 0.25, "k": torch.randn(shape, generator=generator),
              "v": torch.randn(shape, generator=generator),
              "rpb": torch.randn(case["heads"], side, side, generator=generator) * 0.5}
    grad_out = torch.randn(shape, generator=generator)
    return ({name: exact_in_half_types(t).to(device) for name, t in inputs.items()},
            exact_in_half_types(grad_out).to(device))


@functools.lru_cache(maxsize=2)
def _reference(number: int, with_rpb: bool) -> dict:
    inputs, grad_out = _inputs(number, "cuda")
    used = {name: t for name, t in inputs.items() if with_rpb or name != "rpb"}
    case = CASES[number]
    return na_outputs("tiled", used, grad_out, case["kernel"], case["dilation"])


@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("number", range(len(CASES)), ids=[_case_id(case) for case in CASES])
def test_backend_matches_the_float64_tiled_op(number, dtype, backend, record_property):
    if backend == "flex" and flex_unavailable("cuda"):
        pytest.skip(flex_unavailable("cuda"))
    if backend == "natten" and natten_na2d() is None:
        pytest.skip("NATTEN >= 0.20 is not importable")
    case = CASES[number]
    with_rpb = backend != "natten"  # NATTEN's fused kernels have no RPB
    for key, value in dict(case, dtype=dtype, backend=backend, rpb=with_rpb, tolerance=TOLERANCES[dtype]).items():
        record_property(key, value)
    inputs, grad_out = _inputs(number, "cuda")
    used = {name: t.to(getattr(torch, dtype)) for name, t in inputs.items() if with_rpb or name != "rpb"}
    errors, nonfinite = relative_errors(na_outputs(backend, used, grad_out, case["kernel"], case["dilation"]),
                                        _reference(number, with_rpb))
    for name, error in errors.items():
        record_property(f"rel_error_{name}", error)
    assert not any(nonfinite.values()), f"non-finite values: {nonfinite}"
    assert max(errors.values()) <= TOLERANCES[dtype], errors


@pytest.mark.cuda
def test_the_float64_reference_on_the_gpu_is_the_cpus():
    inputs, grad_out = _inputs(0, "cuda")
    case = CASES[0]
    on_cpu = na_outputs("tiled", {name: t.cpu() for name, t in inputs.items()}, grad_out.cpu(), case["kernel"],
                        case["dilation"])
    errors, _ = relative_errors(_reference(0, True), on_cpu)
    assert max(errors.values()) < 1e-12, errors


def test_stage_maps_and_the_positions_that_issue_153799_is_about():
    assert stage_maps(800, 1333) == [(200, 334), (100, 167), (50, 84), (25, 42)]
    assert stage_maps(1024, 1024) == [(256, 256), (128, 128), (64, 64), (32, 32)]
    at_800 = [c for c in CASES if c["image"] == "800x1333"]
    at_1024 = [c for c in CASES if c["image"] == "1024x1024"]
    assert all(c["height"] * c["width"] % 128 for c in at_800)
    assert not any(c["height"] * c["width"] % 128 for c in at_1024)
    # Every dilation of DiNAT-L's COCO config, with its stage's heads.
    assert sorted({(c["stage"], c["dilation"], c["heads"]) for c in at_800}) == [
        (1, 1, 6), (1, 14, 6), (2, 1, 12), (2, 4, 12), (2, 7, 12), (3, 1, 24), (3, 2, 24), (3, 3, 24), (4, 1, 48)]
    assert len(at_1024) == len(at_800) == 9 and CASES[0]["image"] == "small map"


def test_values_exact_in_every_half_type_share_one_reference():
    x = exact_in_half_types(torch.randn(10000, dtype=torch.float64) * 3)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.equal(x.to(dtype).double(), x)
