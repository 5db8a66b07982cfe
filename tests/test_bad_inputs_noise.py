"""diffcore.noise under hostile input and batch splits (issue 16, items 5 and 7): a sample's noise
depends on its seed, its id and its own times only — also with per-sample grids and the Brownian
tree — and every bad argument of the noise API is refused by name."""
import math

import numpy as np
import pytest
import torch

import diffcore
from diffcore import _row, noise, schedules, solvers

SCH = schedules.get("vp_linear")
B, D = 8, 5

# Solvers whose rows draw noise over a time interval (the Brownian tree's input); langevin and
# annealed_langevin only have zero-length rows and are tested separately below.
INTERVAL_SDE = ["ddpm", "ddim_eta", "euler_ancestral", "euler_maruyama", "pc", "dpmpp_2m_sde", "dpmpp_3m_sde"]


def _model(x, t):
    return 0.3 * x


def _grids():
    """Per-sample grids where samples 4–7 reach outside the time range of samples 0–3 (both ends):
    a span shared by the batch would change samples 0–3 when 4–7 are dropped."""
    return torch.stack([torch.linspace(0.7 + 0.04 * b, 0.1 - 0.012 * b, 11, dtype=torch.float64) for b in range(B)])


@pytest.mark.parametrize("brownian", [False, True])
@pytest.mark.parametrize("solver", INTERVAL_SDE)
def test_per_sample_grid_noise_is_batch_split_invariant(solver, brownian):
    g = _grids()
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = diffcore.sample(_model, x, SCH, solver=solver, steps=g, seed=3, brownian=brownian)
    head = diffcore.sample(_model, x[:4], SCH, solver=solver, steps=g[:4], seed=3, brownian=brownian)
    tail = diffcore.sample(_model, x[4:], SCH, solver=solver, steps=g[4:], seed=3, brownian=brownian,
                           sample_ids=torch.arange(4, 8))
    assert torch.equal(head, full[:4])
    assert torch.equal(tail, full[4:])


def test_brownian_noise_is_each_samples_own_tree():
    """The fused step's Brownian draw of sample b is the normalized increment over (t_i, t_{i+1}) of
    a BrownianTree spanning sample b's own grid (computed in the sample's real times, independently
    of the plan). With x = 0 and a zero model output an Euler–Maruyama step leaves x' = c·z."""
    g = _grids()[[0, 5, 7]]
    Bs = g.shape[0]
    plan = solvers.get("euler_maruyama").plan(SCH, g, dtype=torch.float64)
    K = plan.solver.history
    zero = torch.zeros(Bs, D, dtype=torch.float64)
    trees = [noise.BrownianTree(float(g[b].min()), float(g[b].max()), (1, D), seed=5, sample_ids=[b],
                                dtype=torch.float64) for b in range(Bs)]
    for i in range(plan.num_steps):
        st = plan.init_state(zero, noise.Noise(seed=5, brownian=True))
        plan.step(st, i, 0, zero)
        z = st.x / plan.coefs[:, i, 0, _row.layout(K).zx, None]
        for b in range(Bs):
            ref = trees[b].increment(g[b, i], g[b, i + 1])[0]
            assert (z[b] - ref).abs().max().item() < 1e-9, (i, b)


def test_langevin_brownian_keeps_philox_on_zero_length_rows():
    """Langevin's steps have no time increment: with brownian=True they keep their Philox draws (the
    documented behaviour) instead of raising. x = 0 and a zero score leave x' = √(2η)·z."""
    T = 0.4
    plan = solvers.get("langevin").plan(SCH, torch.linspace(1.0, T, 6, dtype=torch.float64), dtype=torch.float64)
    zero = torch.zeros(3, D, dtype=torch.float64)
    eta = 0.2 * float(SCH.eval(torch.tensor(T, dtype=torch.float64)).sigma) ** 2  # the default step size
    for i in range(plan.num_steps):
        st = plan.init_state(zero, noise.Noise(seed=9, brownian=True))
        plan.step(st, i, 0, zero)
        ref = noise.philox_normal((3, D), 9, draw=plan.draws[i][0], dtype=torch.float64)
        assert torch.allclose(st.x / math.sqrt(2 * eta), ref, rtol=1e-12, atol=1e-12)
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name in ("langevin", "annealed_langevin"):
        opts = {"n_steps_each": 3} if name == "annealed_langevin" else {}
        a = diffcore.sample(_model, x, SCH, solver=name, steps=5, seed=2, brownian=True, **opts)
        b = diffcore.sample(_model, x, SCH, solver=name, steps=5, seed=2, **opts)
        assert torch.equal(a, b)


def test_pc_brownian_mixes_tree_and_philox_rows():
    """PC has both kinds of rows (predictor over an interval, corrector at one time): it runs with
    brownian=True and its predictor noise differs from the Philox one."""
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = diffcore.sample(_model, x, SCH, solver="pc", steps=6, seed=2, brownian=True)
    b = diffcore.sample(_model, x, SCH, solver="pc", steps=6, seed=2)
    assert bool(torch.isfinite(a).all()) and (a - b).abs().max().item() > 1e-3


# -- BrownianTree -----------------------------------------------------------------------------------

def _raises(exc, words, fn):
    with pytest.raises(exc) as e:
        fn()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


TREE = dict(t0=0.0, t1=1.0, shape=(4, 3), seed=1)


@pytest.mark.parametrize("out,exc,words", [
    (torch.empty(2, 3), ValueError, ("out", "(4, 3)")),
    (torch.empty(4, 5), ValueError, ("out", "(4, 3)")),
    (torch.empty(12), ValueError, ("out", "(4, 3)")),
    (torch.empty(4, 3, dtype=torch.int64), TypeError, ("out", "floating")),
    (torch.empty(1, 3).expand(4, 3), ValueError, ("out", "stride")),
    ([0.0] * 12, TypeError, ("out",)),
])
def test_tree_increment_refuses_a_bad_out(out, exc, words):
    _raises(exc, words, lambda: noise.BrownianTree(**TREE).increment(0.2, 0.5, out=out))


def test_tree_increment_out_is_filled_in_place():
    tree = noise.BrownianTree(**TREE)
    out = torch.empty(4, 3)
    assert tree.increment(0.2, 0.5, out=out) is out and torch.equal(out, tree.increment(0.2, 0.5))


@pytest.mark.parametrize("ta,tb,exc,words", [
    (torch.full((2, 2), 0.2), 0.5, ValueError, ("ta", "(4,)")),
    (0.2, torch.full((3,), 0.5), ValueError, ("tb", "(4,)")),
    (torch.tensor(0.2 + 1j), 0.5, TypeError, ("ta",)),
    ("a", 0.5, TypeError, ("ta",)),
    (float("nan"), 0.5, ValueError, ("ta, tb", "inside")),
    (0.2, 1.5, ValueError, ("ta, tb", "inside")),
    (0.3, 0.3, ValueError, ("ta != tb",)),
])
def test_tree_increment_refuses_bad_times(ta, tb, exc, words):
    tree = noise.BrownianTree(**TREE)
    _raises(exc, words, lambda: tree.increment(ta, tb))
    _raises(exc, words, lambda: tree(ta, tb))


@pytest.mark.parametrize("kw,exc,words", [
    (dict(dtype=torch.int64), TypeError, ("dtype",)),
    (dict(dtype="float32"), TypeError, ("dtype",)),
    (dict(t0="a"), TypeError, ("t0, t1",)),
    (dict(t0=float("nan")), ValueError, ("t0, t1",)),
    (dict(t0=2.0), ValueError, ("t0, t1", "t0 < t1")),
    (dict(t0=-1e308, t1=1e308), ValueError, ("t0, t1", "finite")),
    # 2**20 leaves cannot be told apart in [1e15, 1e15 + 1] (float64 spacing 0.125 there)
    (dict(t0=1e15, t1=1e15 + 1), ValueError, ("depth", "resolution")),
    (dict(t1=5e-324), ValueError, ("depth", "resolution")),
    (dict(depth=31), ValueError, ("depth",)),
    (dict(depth=2.0), ValueError, ("depth",)),
    (dict(shape=(2.5, 3)), TypeError, ("shape",)),
    (dict(shape=(True, 3)), TypeError, ("shape",)),
    (dict(shape=(-1, 3)), ValueError, ("shape",)),
    (dict(seed=-1), ValueError, ("seed",)),
    (dict(seed=2 ** 64), ValueError, ("seed",)),
    (dict(seed=1.0), ValueError, ("seed",)),
    (dict(sample_ids=[1, 2]), ValueError, ("sample_ids", "(4,)")),
    (dict(sample_ids=[0.5, 1.0, 2.0, 3.0]), TypeError, ("sample_ids", "integer")),
    (dict(sample_ids=[-1, 0, 1, 2]), ValueError, ("sample_ids", "[0, 2**32)")),
])
def test_tree_constructor_refuses_bad_arguments(kw, exc, words):
    _raises(exc, words, lambda: noise.BrownianTree(**{**TREE, **kw}))


def test_tree_accepts_what_is_valid():
    """Negative times are a valid span; a depth the span resolves is accepted; NumPy integer seeds
    are the same seed as the Python int."""
    z = noise.BrownianTree(-2.0, -1.0, (4, 3), seed=1).increment(-1.5, -1.2)
    assert bool(torch.isfinite(z).all())
    assert noise.BrownianTree(1e15, 1e15 + 1, (4, 3), seed=1, depth=2).increment(1e15, 1e15 + 0.5).shape == (4, 3)
    a = noise.BrownianTree(**{**TREE, "seed": np.int64(7)}).increment(0.1, 0.9)
    assert torch.equal(a, noise.BrownianTree(**{**TREE, "seed": 7}).increment(0.1, 0.9))


# -- sample ids, Philox -----------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["ddim", "ddpm"])
def test_sample_ids_of_the_wrong_length_are_refused(solver):
    """Also by a deterministic solver, which draws nothing but would otherwise ignore the caller's
    mismatched ids silently."""
    x = torch.randn(4, 3)
    _raises(ValueError, ("sample_ids", "(4,)"),
            lambda: diffcore.sample(_model, x, SCH, solver=solver, steps=5, seed=1, sample_ids=[0, 1]))


@pytest.mark.parametrize("ids,exc,words", [
    ([0.5, 1.0], TypeError, ("sample_ids", "integer")),
    ([True, False], TypeError, ("sample_ids", "integer")),
    ([-1, 1], ValueError, ("sample_ids", "[0, 2**32)")),
    ([0, 2 ** 32], ValueError, ("sample_ids", "[0, 2**32)")),
    ([[0, 1]], ValueError, ("sample_ids", "1-D")),
    ("ab", TypeError, ("sample_ids",)),
])
def test_noise_refuses_bad_sample_ids_when_built(ids, exc, words):
    _raises(exc, words, lambda: noise.Noise(seed=1, sample_ids=ids))


@pytest.mark.parametrize("kw,exc,words", [
    (dict(draw=1.5), TypeError, ("draw",)),
    (dict(draw=float("nan")), TypeError, ("draw",)),
    (dict(draw=-1), ValueError, ("draw",)),
    (dict(draw=2 ** 32), ValueError, ("draw",)),
    (dict(domain=3), ValueError, ("domain",)),
    (dict(domain=2 ** 40), ValueError, ("domain",)),
    (dict(domain=1.0), TypeError, ("domain",)),
    (dict(shape=(2.5, 3)), TypeError, ("shape",)),
    (dict(shape=(True, 3)), TypeError, ("shape",)),
    (dict(dtype=torch.int32), TypeError, ("dtype",)),
    (dict(seed=None), ValueError, ("seed",)),
    (dict(sample_ids=[1]), ValueError, ("sample_ids", "(2,)")),
])
def test_philox_normal_refuses_bad_arguments(kw, exc, words):
    args = {"shape": (2, 3), "seed": 1, **kw}
    _raises(exc, words, lambda: noise.philox_normal(**args))


def test_philox_normal_draw_accepts_integer_types():
    a = noise.philox_normal((2, 3), 1, draw=np.int64(4))
    assert torch.equal(a, noise.philox_normal((2, 3), 1, draw=4))


@pytest.mark.parametrize("counter,key,exc,words", [
    ([1, 0, 0], [0, 0], ValueError, ("counter",)),
    ([-1, 0, 0, 0], [0, 0], ValueError, ("counter",)),
    ([2 ** 32, 0, 0, 0], [0, 0], ValueError, ("counter",)),
    ([0.5, 0, 0, 0], [0, 0], TypeError, ("counter",)),
    ([0, 0, 0, 0], [0], ValueError, ("key",)),
    ([0, 0, 0, 0], [0, 2 ** 32], ValueError, ("key",)),
])
def test_philox4x32_refuses_bad_words(counter, key, exc, words):
    _raises(exc, words, lambda: noise.philox4x32(counter, key))


def test_philox4x32_known_answer_through_the_checked_wrapper():
    # Random123 known-answer vector of Philox-4x32-10 (counter and key all ones)
    ones = 0xFFFFFFFF
    assert noise.philox4x32([ones] * 4, [ones] * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)


def test_reference_and_default_seed_refuse_bad_arguments():
    _raises(ValueError, ("n",), lambda: noise.philox_normal_reference(-1, 1))
    _raises(ValueError, ("seed",), lambda: noise.philox_normal_reference(4, -1))
    _raises(ValueError, ("sample_id",), lambda: noise.philox_normal_reference(4, 1, sample_id=2 ** 32))
    _raises(TypeError, ("generator",), lambda: noise.default_seed("x"))
