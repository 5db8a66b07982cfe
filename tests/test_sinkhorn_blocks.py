"""Sinkhorn split over several blocks per problem (csrc/ot/sinkhorn_blocks.h; book Sec. 7.2.2).

The CUDA solver runs a large problem on many thread blocks that meet at a barrier after each phase.
The same phase functions run block by block on the CPU when ``_core.sinkhorn`` gets ``blocks=P``;
these tests hold that decomposition to the CPU solver (same iteration counts and statuses, plans equal
to rounding), to marginals computed here from the returned plans, and to POT. The CUDA tests (marked
``cuda``) run in a child interpreter, so a barrier that never opens fails with a timeout instead of
hanging the run.
"""
import numpy as np
import pytest
import torch
from torch.utils.dlpack import to_dlpack

import diffcore
from diffcore import _ops, ot

from isolated import expect_ok

core = _ops._core
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and diffcore.build_info()["cuda"]), reason="no CUDA device")


def solve(C, a=None, b=None, blocks=0, eps=0.05, tol=1e-9, max_iters=1000, check_every=10, scaling=2, relax=True):
    """The compiled solver on [B, n, m] CPU tensors: blocks = 0 its own CPU solver, P > 0 the split
    formulation run block by block. Returns (plan, f, g, stats, iters)."""
    B, n, m = C.shape
    plan = torch.empty_like(C)
    f = torch.empty(B, n, dtype=C.dtype)
    g = torch.empty(B, m, dtype=C.dtype)
    stats = torch.empty(B, 4, dtype=torch.float64)
    iters = torch.empty(B, dtype=torch.int64)
    wtol = 1e-8 if C.dtype == torch.float64 else 1e-4
    core.sinkhorn(to_dlpack(C), None if a is None else to_dlpack(a), None if b is None else to_dlpack(b),
                  to_dlpack(plan), to_dlpack(f), to_dlpack(g), to_dlpack(stats), to_dlpack(iters), None, eps, tol,
                  max_iters, check_every, scaling, 0.0, 0.5, 1e-3, relax, wtol, 1, 0, blocks=blocks)
    return plan, f, g, stats, iters


def problem(B, n, m, zeros=True, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, 2, generator=g, dtype=torch.float64)
    y = torch.randn(B, m, 2, generator=g, dtype=torch.float64) + 1.0
    C = ot.squared_euclidean(x, y)
    C = scale * C / C.amax(dim=(-2, -1), keepdim=True)
    a = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(B, m, generator=g, dtype=torch.float64) + 0.1
    if zeros:  # zero weights: rows/columns outside every sum, potentials by c-transform
        a[:, 1::7] = 0.0
        b[:, -2:] = 0.0
    return C, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def marginal_errors(plan, a, b):
    P = plan.double()
    return (P.sum(-1) - a).abs().sum(-1), (P.sum(-2) - b).abs().sum(-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("blocks", [1, 3, 16, 40, 80])
def test_blocks_match_the_cpu_solver(dtype, blocks):
    # 40 and 80 blocks over 37 columns: some blocks own no column, the rows still split; from 64 blocks a
    # group of threads sums each column's block partials
    C, a, b = problem(3, 90, 37)
    C, a, b = C.to(dtype), a.to(dtype), b.to(dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-6
    ref = solve(C, a, b, tol=tol)
    got = solve(C, a, b, blocks=blocks, tol=tol)
    assert got[4].tolist() == ref[4].tolist()
    assert got[3][:, 3].tolist() == ref[3][:, 3].tolist() == [0.0, 0.0, 0.0]
    row, col = marginal_errors(got[0], a.double(), b.double())
    slack = 1e-12 if dtype == torch.float64 else 1e-6  # the float32 plan's own rounding
    assert float(row.max()) <= tol + slack and float(col.max()) <= 1e-12 + slack
    assert torch.allclose(got[3][:, 2], row, rtol=1e-6, atol=1e-15) or dtype == torch.float32
    close = 1e-13 if dtype == torch.float64 else 1e-7
    assert float((got[0].double() - ref[0].double()).abs().max()) <= close
    assert torch.allclose(got[3][:, :2], ref[3][:, :2], rtol=1e-12, atol=0)
    # potentials (also on zero-weight entries, where they are c-transforms): equal up to rounding
    pf = 1e-10 if dtype == torch.float64 else 1e-5
    assert float((got[1].double() - ref[1].double()).abs().max()) <= pf
    assert float((got[2].double() - ref[2].double()).abs().max()) <= pf


@pytest.mark.parametrize("opts", [dict(eps=3e-3, check_every=1), dict(eps=3e-3, relax=False, max_iters=150),
                                  dict(eps=2e-3, scaling=1),
                                  dict(eps=1e-5, scale=100.0, scaling=0, max_iters=300),
                                  dict(eps=1e-4, scale=1000.0, scaling=2, max_iters=3000)],
                         ids=["check-every-iteration", "plain-capped", "eps-scaling", "repairs", "auto-scaling"])
def test_blocks_follow_every_branch(opts):
    """Iteration counts (stopping at every check, at the cap, through ε stages, log-domain repairs of
    underflowed sums, automatic ε-scaling at ε = 1e-7 × the cost range) equal to the CPU solver's."""
    scale = opts.pop("scale", 1.0)
    C, a, b = problem(2, 64, 80, scale=scale, seed=3)
    ref = solve(C, a, b, **opts)
    got = solve(C, a, b, blocks=5, **opts)
    assert (got[4] - ref[4]).abs().max() <= 1
    assert got[3][:, 3].tolist() == ref[3][:, 3].tolist()
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    assert float((got[0] - ref[0]).abs().sum(dim=(1, 2)).max()) <= 1e-9
    if ref[3][0, 3] == 0:
        row, _ = marginal_errors(got[0], a, b)
        assert float(row.max()) <= 1e-9 + 1e-12


def test_blocks_match_pot():
    pot = pytest.importorskip("ot")
    C, a, b = problem(1, 70, 50, zeros=False, seed=5)
    got = solve(C, a, b, blocks=6, eps=0.05, tol=1e-12, max_iters=5000)
    P = pot.bregman.sinkhorn_log(a[0].numpy(), b[0].numpy(), C[0].numpy(), 0.05, stopThr=1e-13, numItermax=100000)
    assert np.abs(got[0][0].numpy() - P).sum() <= 1e-9
    # transport cost ⟨P, C⟩ from the plan here
    assert abs(float(got[3][0, 1]) - float((torch.from_numpy(P) * C[0]).sum())) <= 1e-10


def test_blocks_report_bad_inputs_like_the_cpu_solver():
    C, a, b = problem(5, 30, 20, zeros=False, seed=7)
    C[0, 3, 4] = float("nan")
    a[1, 2] = -0.1
    a[2] *= 1.01
    b[3, 0] = float("inf")
    b[4] *= 0.9
    ref = solve(C, a, b)
    got = solve(C, a, b, blocks=4)
    assert got[3][:, 3].tolist() == ref[3][:, 3].tolist() == [2.0, 3.0, 5.0, 4.0, 6.0]
    assert got[4].tolist() == [0] * 5 and bool(torch.isnan(got[3][:, :3]).all())


def test_blocks_argument_and_work_size():
    C, a, b = problem(1, 8, 8)
    for bad in (-1, 257):
        with pytest.raises(ValueError, match="blocks: expected 0 .automatic. or 1 <= blocks <= 256"):
            solve(C, a, b, blocks=bad)
        with pytest.raises(ValueError, match="blocks"):
            core.sinkhorn_work_size(8, 8, bad)
    with pytest.raises(ValueError, match="n, m: expected n >= 1"):
        core.sinkhorn_work_size(0, 8)
    # per row and column six float64 entries; a split problem adds a barrier word, two buffers of
    # 8 partial sums per block and one column-sum row per block
    assert core.sinkhorn_work_size(256, 256) == 6 * 512
    assert core.sinkhorn_work_size(4096, 4096) == 6 * 8192 + 1 + 2 * 256 * 8 + 256 * 4096
    assert core.sinkhorn_work_size(1024, 1024) == 6 * 2048 + 1 + 2 * 256 * 8 + 256 * 1024
    assert core.sinkhorn_work_size(16, 1 << 16) == 6 * (16 + (1 << 16)) + 1 + 2 * 4 * 8 + 4 * (1 << 16)
    assert core.sinkhorn_work_size(100, 50, blocks=3) == 6 * 150 + 1 + 2 * 3 * 8 + 3 * 50


# ------------------------------------------------------------------------------------------------
# CUDA: the split kernel against the CPU solver and the one-block kernel

_CUDA_PRELUDE = """
import torch
from torch.utils.dlpack import to_dlpack
from diffcore import _ops, ot
core = _ops._core

def cuda_solve(C, blocks, eps=0.01, tol=1e-9, check_every=10):
    B, n, m = C.shape
    out = [torch.empty_like(C), torch.empty(B, n, dtype=C.dtype, device=C.device),
           torch.empty(B, m, dtype=C.dtype, device=C.device), torch.empty(B, 4, dtype=torch.float64, device=C.device),
           torch.empty(B, dtype=torch.int64, device=C.device)]
    work = torch.empty(B, core.sinkhorn_work_size(n, m, blocks), dtype=torch.float64, device=C.device)
    core.sinkhorn(to_dlpack(C), None, None, *[to_dlpack(t) for t in out], to_dlpack(work), eps, tol, 1000,
                  check_every, 2, 0.0, 0.5, 1e-3, True, 1e-8, 1, torch.cuda.current_stream().cuda_stream, blocks=blocks)
    torch.cuda.synchronize()
    return [t.cpu() for t in out]

def cost(B, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, 2, generator=g, dtype=torch.float64)
    C = ot.squared_euclidean(x, torch.randn(B, n, 2, generator=g, dtype=torch.float64) + 1.0)
    return C / C.amax(dim=(-2, -1), keepdim=True)
"""


@cuda
@pytest.mark.cuda
def test_cuda_large_problem_uses_many_blocks_and_matches_cpu():
    """n = 2048 (split automatically): ‖P1 − a‖₁ ≤ 1e-6 on the returned plan and the CPU solver's
    iteration count within ±1, checking every iteration; a batch of 32 problems of 1024 likewise."""
    expect_ok(_CUDA_PRELUDE + """
for B, n in ((1, 2048), (32, 1024)):
    C = cost(B, n, n + B)
    gpu = ot.sinkhorn(None, None, C.cuda(), 0.01, tol=1e-9, check_every=1)
    cpu = ot.sinkhorn(None, None, C, 0.01, tol=1e-9, check_every=1)
    assert bool(gpu.converged.all())
    row = (gpu.plan.double().sum(-1) - 1.0 / n).abs().sum(-1)
    assert float(row.max()) <= 1e-6, float(row.max())
    assert int((gpu.iterations.cpu() - cpu.iterations).abs().max()) <= 1, (gpu.iterations, cpu.iterations)
    assert float((gpu.plan.cpu() - cpu.plan).abs().sum(dim=(1, 2)).max()) <= 1e-7
""", timeout=300)


@cuda
@pytest.mark.cuda
def test_cuda_forced_blocks_match_one_block_kernel():
    expect_ok(_CUDA_PRELUDE + """
C = cost(4, 300, 1).cuda()
one = cuda_solve(C, 1, check_every=1)
for P in (2, 9, 64):
    many = cuda_solve(C, P, check_every=1)
    assert (many[4] - one[4]).abs().max() <= 1, (P, many[4], one[4])
    assert many[3][:, 3].tolist() == [0.0] * 4
    assert float((many[0] - one[0]).abs().sum(dim=(1, 2)).max()) <= 1e-8
    assert float((many[0].sum(-1) - 1 / 300).abs().sum(-1).max()) <= 1e-9 + 1e-12
import pytest
with pytest.raises(ValueError, match="blocks"):
    cuda_solve(torch.zeros(1, 8, 8, dtype=torch.float64, device="cuda").expand(100, 8, 8).contiguous(), 256)
""", timeout=300)
