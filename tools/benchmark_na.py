#!/usr/bin/env python
"""Benchmark neighborhood attention: time and peak memory of `na2d` per backend, shape and dtype.

Shapes are the four DiNAT-L stages (kernel 11, head dim 32, the largest dilation of each stage) at each
--image input (N for N x N, or HxW), plus the reference layer of the performance issue (200x200 map, 6 heads,
d=14). A "gather" row is `na2d_reference` (keys and values gathered per query, 8 query rows at a time), the
usual baseline.
"natten" rows (NATTEN >= 0.20, the default when importable) always run without RPB, which NATTEN dropped;
the ratio columns compare every row with them. Each measurement runs in a fresh process so CPU peak memory
(max RSS growth) is its own; on CPU that process may use 3/4 of the RAM, beyond it the row reads n/a.
--one-process measures every row in one worker instead: faster (compiled kernels are reused), and CUDA peak
memory stays per row (allocator statistics), while CPU peak memory then includes the earlier rows.

    python tools/benchmark_na.py                        # CPU, float32, tiled + gather (+ natten), 640x640
    python tools/benchmark_na.py --device cuda --dtypes bfloat16 --backends tiled,flex,natten,gather --image 1024
    python tools/benchmark_na.py --device cuda --dtypes bfloat16 --backends tiled,flex,gather --image 1024,800x1216 \
        --one-process
    python tools/benchmark_na.py --before 7d345fa --rounds 4     # the tiled op of another revision against this one
    python tools/benchmark_na.py --kernel-floor                  # the tiled forward against its attention kernel alone
    python tools/benchmark_na.py --check-cost --image 1024,800x1216     # flex's first-use check, once per kind

--before REV compares the tiled backend of git revision REV (its neighborhood_attention package, `git archive`d
into a temporary folder, its custom ops renamed so both load) with this checkout's, in one process, the two
alternated --rounds times per row, q, k, v laid out as NeighborhoodAttention2D makes them (views of one qkv
tensor). On a shared machine whose speed drifts, alternating in one process is what makes the two comparable;
separate runs of the table above differed by up to 50% between runs of the same code here.

--kernel-floor measures what bounds the tiled forward on this machine, in one process (float32, RPB, q, k, v as
NeighborhoodAttention2D makes them): the whole op, and its fused attention calls alone (each chunk's
scaled_dot_product_attention on blocks gathered beforehand, the same chunks and masks), with the scores those
blocks hold (against the exact k*k per query), the kernel's CPU time per score, and the arithmetic floor: the
exact window's 4 * D flops per score at the machine's float32 matrix rate (a 4096^3 product, measured first).

--check-cost times the automatic choice's first-use check of flex against tiled (neighborhood_attention/verify.py)
for every kind of call that DiNAT-L's layers (configs/coco/panoptic/dinat_l.yaml: kernel, dilations, heads) make at
each --image, batch 1, in one process, in the order the model meets them: each check once (it compiles flex where
the model's own call would: the check's inputs are like the call's), then the same check again (compiled: what the
check itself costs, flex and tiled on the call's shapes). Forward kinds (inference); --check-training adds training
kinds where flex has a backward (CUDA).
"""
from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dinat_m2f.layers.neighborhood_attention.natten import natten_na2d  # noqa: E402
from dinat_m2f.utils.benchmark import (  # noqa: E402
    best_time, extract_revision, limit_memory, peak_memory_mb, reset_peak_memory,
)

DINAT_L_STAGES = [  # (stride, heads, largest dilation for a 640 input, from configs/*/dinat_l.yaml)
    (4, 6, 14), (8, 12, 7), (16, 24, 3), (32, 48, 1)]


def _measure(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    if spec["device"] == "cpu":
        limit_memory()
    from dinat_m2f.layers import na2d, na2d_reference

    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    height, width, heads, dilation, kernel = (spec[key] for key in ("height", "width", "heads", "dilation", "kernel"))
    shape = (spec["batch"], heads, height, width, 32)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, device=device, dtype=dtype) if spec["rpb"] else None

    def forward():
        if spec["backend"] == "gather":
            return na2d_reference(q, k, v, kernel, dilation, rpb)
        return na2d(q, k, v, kernel, dilation, rpb, backend=spec["backend"])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> tuple[float, float]:
        """Best wall time and best CPU time (of all threads; competing processes inflate it less)."""
        return best_time(lambda: (fn(), sync()), spec["repeats"])

    result = dict(spec)
    base = reset_peak_memory(device)
    try:
        with torch.no_grad():
            result["forward_s"], result["forward_cpu_s"] = timed(forward)
        leaves = [t.requires_grad_(True) for t in (q, k, v) + ((rpb,) if rpb is not None else ())]
        grad = torch.randn(shape, device=device, dtype=dtype)

        def forward_backward():
            torch.autograd.grad(forward(), leaves, grad)

        result["train_s"], result["train_cpu_s"] = timed(forward_backward)
    except (RuntimeError, ValueError) as error:  # out of memory, unsupported backend
        result["error"] = str(error).splitlines()[0]  # shown as n/a in the table, kept in --json
    result["peak_mb"] = peak_memory_mb(device) - base
    return result


def _import_revision(revision: str, folder: str):
    """The neighborhood_attention package as it is at `revision`, imported as a package of its own."""
    member = "dinat_m2f/layers/neighborhood_attention"
    extract_revision(revision, [member], folder)
    name = "na_" + "".join(c if c.isalnum() else "_" for c in revision)
    package = Path(folder) / name
    (Path(folder) / member).rename(package)
    for module in package.glob("*.py"):  # the custom ops' namespace, so that both revisions can register theirs
        module.write_text(module.read_text().replace('"dinat_m2f::', f'"dinat_m2f_{name}::'))
    sys.path.insert(0, folder)
    return importlib.import_module(name)


def _compare_revisions(revision: str, rows: list, rounds: int, repeats: int, threads: int) -> None:
    """Best forward and forward+backward time of the tiled op at `revision` and here, alternated in one process."""
    from dinat_m2f.layers import na2d

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        before = _import_revision(revision, folder)
        ops = {revision: before.na2d, "this checkout": na2d}
        print(f"tiled na2d, {revision} against this checkout, kernel 11, head dim 32, RPB, float32, batch 1, torch "
              f"{torch.__version__}, cpu ({platform.processor() or platform.machine()}), {threads} threads, "
              f"best of {rounds} alternated rounds x {repeats} calls")
        print(f"| map | heads | dilation | forward ms, {revision} | this checkout | fwd+bwd ms, {revision} "
              "| this checkout |")
        print("|---|---|---|---|---|---|---|")
        for _, height, width, heads, dilation in rows:
            if min(height, width) < 11:  # smaller than the window: no neighborhood attention at this size
                continue
            qkv = torch.randn(1, height, width, 3, heads, 32)
            q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
            rpb = torch.randn(heads, 21, 21)
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
            grad = torch.randn(1, heads, height, width, 32)
            forward, train = {n: float("inf") for n in ops}, {n: float("inf") for n in ops}
            for number in range(rounds):
                for name in (list(ops) if number % 2 == 0 else list(ops)[::-1]):
                    op = ops[name]
                    with torch.no_grad():  # after a warm-up call: the plan
                        seconds = best_time(lambda: op(q, k, v, 11, dilation, rpb, backend="tiled"), repeats)[0]
                    forward[name] = min(forward[name], seconds)
                    seconds = best_time(lambda: torch.autograd.grad(
                        op(*leaves[:3], 11, dilation, leaves[3], backend="tiled"), leaves, grad), repeats, warmup=0)[0]
                    train[name] = min(train[name], seconds)
            cells = [f"{forward[n] * 1e3:.1f}" for n in ops] + [f"{train[n] * 1e3:.1f}" for n in ops]
            print(f"| {height}x{width} | {heads} | {dilation} | " + " | ".join(cells) + " |", flush=True)


def kernel_calls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor | None, dilation: int,
                 kernel_size: int = 11) -> list[tuple]:
    """The tiled forward's attention calls for one image, with their inputs gathered: (q blocks, k blocks,
    v blocks, mask, query positions) per chunk, the op's own chunks, in float32."""
    from dinat_m2f.layers.neighborhood_attention import tiled
    from dinat_m2f.layers.neighborhood_attention.plan import plan_2d

    batch, heads, height, width, dim = q.shape
    plan = plan_2d(height, width, kernel_size, dilation, q.device)
    masks = [tiled._attention_mask(rpb, pair, torch.float32, batch) for pair in plan.pairs]
    rows = [tiled._gatherable(tiled.to_rows(t)) for t in (q, k, v)]
    cost = lambda queries, keys: (queries + 2 * keys) * dim  # noqa: E731  (as the op chunks its gathers)
    calls = []
    for number, (tq, tk), n, q_index, k_index, _ in tiled._chunks(plan, batch, heads, tiled.GATHER_BUDGET, cost):
        blocks = [tiled._gather(r, index, n, size, batch).flatten(0, 1)
                  for r, index, size in zip(rows, (q_index, k_index, k_index), (tq, tk, tk))]
        calls.append((*blocks, masks[number], q_index))
    return calls


def _kernel_floor(rows: list, repeats: int, threads: int) -> None:
    """The tiled forward against its fused attention calls alone on pre-gathered blocks (see the docstring)."""
    from dinat_m2f.engine import reuse_freed_memory
    from dinat_m2f.layers import na2d

    torch.set_num_threads(threads)
    reuse_freed_memory()  # as train_net.py and the demo run: no page faults of fresh temporaries in the times
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    rate = 2 * 4096 ** 3 / best_time(lambda: a @ b, 3)[0]
    print(f"tiled na2d forward and its attention kernel alone, kernel 11, head dim 32, RPB, float32, batch 1, torch "
          f"{torch.__version__}, cpu ({platform.processor() or platform.machine()}), {threads} threads, best of "
          f"{repeats}; float32 matrix rate {rate / 1e9:.0f} GFLOP/s (4096^3)")
    print("| map | heads | dilation | forward ms | attention kernel alone ms | its share | scores in tiles, M "
          "| exact scores, M | kernel CPU ns per score | arithmetic floor ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _, height, width, heads, dilation in rows:
        if min(height, width) < 11:
            continue
        qkv = torch.randn(1, height, width, 3, heads, 32)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
        rpb = torch.randn(heads, 21, 21)
        with torch.no_grad():
            forward = best_time(lambda: na2d(q, k, v, 11, dilation, rpb, backend="tiled"), repeats)[0]
            calls = kernel_calls(q, k, v, rpb, dilation)
            scores = sum(q_blocks.shape[0] * q_blocks.shape[1] * q_blocks.shape[2] * k_blocks.shape[2]
                         for q_blocks, k_blocks, *_ in calls)

            def kernel_alone():
                for q_blocks, k_blocks, v_blocks, mask, _ in calls:
                    F.scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, attn_mask=mask, scale=1.0)

            alone, alone_cpu = best_time(kernel_alone, repeats)
        exact = heads * height * width * 121
        cells = [f"{height}x{width}", str(heads), str(dilation), f"{forward * 1e3:.1f}", f"{alone * 1e3:.1f}",
                 f"{alone / forward:.0%}", f"{scores / 1e6:.1f}", f"{exact / 1e6:.1f}",
                 f"{alone_cpu / scores * 1e9:.2f}", f"{4 * 32 * exact / rate * 1e3:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


def model_calls(images: list[tuple[int, int]], config: str = "configs/coco/panoptic/dinat_l.yaml") -> list[tuple]:
    """(height, width, heads, head dim, kernel, dilation) of the first call of each kind (dilation and map-size
    class, verify.py) that a model config's neighborhood attention makes at these input sizes, in call order (maps
    smaller than the window padded to it, as the layer does)."""
    from dinat_m2f.config import load_project_config
    from dinat_m2f.layers.neighborhood_attention import verify

    dinat = load_project_config(config).MODEL.DINAT
    kernel = dinat.KERNEL_SIZE
    calls, seen = [], set()
    for height, width in images:
        for stage, (dilations, heads) in enumerate(zip(dinat.DILATIONS, dinat.NUM_HEADS)):
            for dilation in dilations:
                window = kernel * dilation
                map_h, map_w = max(height // 4 >> stage, window), max(width // 4 >> stage, window)
                if (dilation, verify.map_class(map_h, map_w)) not in seen:
                    seen.add((dilation, verify.map_class(map_h, map_w)))
                    calls.append((map_h, map_w, heads, dinat.EMBED_DIM * 2 ** stage // heads, kernel, dilation))
    return calls


def _check_cost(images: list[tuple[int, int]], dtypes: list[str], device: str, training: bool, threads: int) -> None:
    """Time of flex's first-use check per kind of DiNAT-L's calls, batch 1 (see the docstring)."""
    from torch import nn

    from dinat_m2f.layers.neighborhood_attention import flex, tiled, verify

    torch.set_num_threads(threads)
    print(f"flex's first-use check against tiled per kind of DiNAT-L call at {', '.join(f'{h}x{w}' for h, w in images)}"
          f", batch 1, torch {torch.__version__}, {device} ({_device_name(device)}), {threads} CPU threads")
    print("| dtype | pass | map | heads | dilation | map class | first check s | again s | its tiled part s "
          "| verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = again_total = 0.0
    for dtype in dtypes:
        for needs_grad in (False, True) if training else (False,):
            for height, width, heads, head_dim, kernel, dilation in model_calls(images):
                q = torch.empty(1, heads, height, width, head_dim, device=device, dtype=getattr(torch, dtype),
                                requires_grad=needs_grad)
                rpb = nn.Parameter(torch.empty(heads, 2 * kernel - 1, 2 * kernel - 1, device=device, dtype=q.dtype))
                cells = [dtype, "training" if needs_grad else "forward", f"{height}x{width}", str(heads),
                         str(dilation), verify.map_class(height, width)]
                unable = flex.why_not(q, rpb, 0.0, needs_grad)
                if unable is not None:
                    print("| " + " | ".join(cells + ["-", "-", "-", f"not run: flex {unable}"]) + " |", flush=True)
                    continue
                with torch.set_grad_enabled(needs_grad):
                    first, verdict = _timed(lambda: verify.check(flex, tiled, q, rpb, kernel, dilation), device)
                    again = None
                    if verdict is None:  # after a failure nothing compiled is reused: it would fail again
                        again = _timed(lambda: verify.check(flex, tiled, q, rpb, kernel, dilation), device)[0]
                    probe, grad_out = verify.probe_inputs(q, rpb)
                    tiled_part = _timed(lambda: verify.outputs_and_grads(tiled, probe, grad_out, kernel, dilation),
                                        device)[0]
                total, again_total = total + first, again_total + (again or 0.0)
                cells += [f"{first:.2f}", "-" if again is None else f"{again:.2f}", f"{tiled_part:.2f}",
                          verdict or "passed"]
                print("| " + " | ".join(cells) + " |", flush=True)
    print(f"all checks: first {total:.1f} s, again (passed ones) {again_total:.1f} s")


def _timed(fn, device: str) -> tuple[float, object]:
    """(seconds, result) of one call, the device synchronized."""
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _image_sizes(text: str) -> list[tuple[int, int]]:
    """"1024,800x1216" -> [(1024, 1024), (800, 1216)]."""
    sizes = []
    for item in text.split(","):
        height, x, width = item.partition("x")
        if not (height.isdigit() and (width.isdigit() if x else not width)):
            raise argparse.ArgumentTypeError(f"--image: expected N or HxW, got {item!r}")
        sizes.append((int(height), int(width if x else height)))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--backends", default=None, help="comma-separated, of tiled, flex, natten, export, gather "
                        "(default: tiled,gather, and natten when importable)")
    parser.add_argument("--image", type=_image_sizes, default="640",
                        help="input sizes, comma-separated: N (N x N) or HxW, e.g. 1024,800x1216")
    parser.add_argument("--no-reference-layer", action="store_true", help="without the 200x200 reference layer")
    parser.add_argument("--one-process", action="store_true", help="measure all rows in one worker process")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-rpb", action="store_true", help="without RPB (what NATTEN's fused kernels support)")
    parser.add_argument("--json", help="also write the rows to this file (rewritten after each row)")
    parser.add_argument("--before", metavar="REV", help="compare the tiled op of git revision REV with this one")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds of --before")
    parser.add_argument("--kernel-floor", action="store_true",
                        help="the tiled forward against its attention kernel alone and the arithmetic floor")
    parser.add_argument("--check-cost", action="store_true",
                        help="time flex's first-use check once per kind of DiNAT-L's calls at --image")
    parser.add_argument("--check-training", action="store_true", help="with --check-cost: also training kinds")
    args = parser.parse_args()
    backends = args.backends or "tiled,gather" + (",natten" if natten_na2d() is not None else "")

    if args.check_cost:
        _check_cost(args.image, args.dtypes.split(","), args.device, args.check_training, args.threads)
        return
    specs = []
    rows = [(f"{h}x{w}", h // stride, w // stride, heads, dilation)
            for h, w in args.image for stride, heads, dilation in DINAT_L_STAGES]
    if not args.no_reference_layer:
        rows.append(("reference layer", 200, 200, 6, 14))  # the reference layer of the performance issue
    rows = [(image, height, width, heads, min(dilation, min(height, width) // 11))
            for image, height, width, heads, dilation in rows]
    if args.before:
        _compare_revisions(args.before, rows, args.rounds, args.repeats, args.threads)
        return
    if args.kernel_floor:
        _kernel_floor(rows, args.repeats, args.threads)
        return
    for image, height, width, heads, dilation in rows:
        for dtype in args.dtypes.split(","):
            for backend in backends.split(","):
                specs.append(dict(device=args.device, dtype=dtype, backend=backend, image=image, height=height,
                                  width=width, heads=heads, dilation=dilation,
                                  kernel=11, batch=args.batch, rpb=not args.no_rpb and backend != "natten",
                                  threads=args.threads, repeats=args.repeats))
    context = mp.get_context("spawn")
    results = []

    def measure(pool, spec: dict) -> None:
        results.append(pool.apply(_measure, (spec,)))
        if args.json:  # after each row (whole, by a rename), so a run stopped part way keeps what it measured
            with open(args.json + ".partial", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(args.json + ".partial", args.json)

    if args.one_process:
        with context.Pool(1) as pool:
            for spec in specs:
                measure(pool, spec)
    else:
        for spec in specs:
            with context.Pool(1) as pool:
                measure(pool, spec)

    print(f"na2d, kernel 11, head dim 32, batch {args.batch}, torch {torch.__version__}, "
          f"{args.device} ({_device_name(args.device)}), {args.threads} CPU threads")
    print("| map | heads | dilation | dtype | backend | rpb | forward ms | fwd+bwd ms | forward CPU ms "
          "| fwd+bwd CPU ms | peak MB "
          "| fwd / natten | fwd+bwd / natten |")
    print("|" + "---|" * 13)
    natten = {(r["height"], r["width"], r["dtype"]): r for r in results if r["backend"] == "natten"}

    def ms(seconds: float | None) -> str:
        return f"{seconds * 1e3:.1f}" if seconds else "n/a"

    def ratio(r: dict, key: str) -> str:
        ours, theirs = r.get(key), natten.get((r["height"], r["width"], r["dtype"]), {}).get(key)
        return f"{ours / theirs:.3g}x" if ours and theirs else "-"

    for r in results:
        cells = [f"{r['height']}x{r['width']}", str(r["heads"]), str(r["dilation"]), r["dtype"], r["backend"],
                 "yes" if r["rpb"] else "no", ms(r.get("forward_s")), ms(r.get("train_s")),
                 ms(r.get("forward_cpu_s")), ms(r.get("train_cpu_s")), f"{r['peak_mb']:.0f}",
                 ratio(r, "forward_s"), ratio(r, "train_s")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
