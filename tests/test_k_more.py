"""diffcore.k, continued: no_grad sampling, the rest of k-diffusion's samplers and helpers, and the
install path of k-diffusion's sampling module.

Ground truths: k-diffusion's own functions (loaded by ``diffcore.integrations._peers.load_k_diffusion``;
skipped when unavailable) run on the same inputs and the same noise in float64; the Brownian-tree
law (independent N(0, |Δσ|) increments, additivity) with fixed seeds and bounds that fail by chance
< 1e-4; the import list of the installed k-diffusion package for the install path.
"""
import ast
import contextlib
import math
import pathlib
import re

import pytest
import torch

import diffcore.k as DK
from diffcore import oracles, schedules
from diffcore.noise import default_seed
from diffcore.solvers.base import Plan
from isolated import expect_error, expect_ok

pytestmark = pytest.mark.usefixtures("one_thread")

SCH = schedules.get("edm")
MIX = oracles.toy_2d_mixture()
F64 = torch.float64
GRID0 = DK.get_sigmas_karras(8, 0.03, 14.6, dtype=F64)
GRIDS = {"zero": GRID0, "nozero": GRID0[:-1]}
ROOT = pathlib.Path(__file__).resolve().parents[1]


def den(x, sigma, **_):
    return MIX.predict(x, sigma, SCH, "x0")


def start(grid, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64) * grid[0]


from k_peer import keyed, kdiff  # noqa: E402  (shared with the other k-diffusion parity module)


@contextlib.contextmanager
def default_f64():
    """k-diffusion builds its DPM-Solver times with torch.tensor(σ) in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def close(a, b, tol=1e-12):
    scale = max(b.abs().max().item(), 1.0)
    return (a - b).abs().max().item() <= tol * scale


# -- 1. no_grad, and the fused step is taken --------------------------------------------------------

PLAN_SAMPLERS = [("sample_euler", {}), ("sample_heun", {}), ("sample_dpm_2", {}), ("sample_dpmpp_2m", {}),
                 ("sample_euler_ancestral", {}), ("sample_dpmpp_2m_sde", {}), ("sample_dpmpp_3m_sde", {}),
                 ("sample_dpmpp_2s", {}), ("sample_unipc", {}), ("sample_ddim", {}), ("sample_ddpm", {}),
                 ("sample_deis", {}), ("sample_ipndm", {}), ("sample_dpm_3", {}), ("sample_dpmpp_3m", {}),
                 ("sample_lms", {})]
KSTYLE = [("sample_lms", {"order": 5}), ("sample_dpm_2_ancestral", {}), ("sample_dpmpp_2s_ancestral", {}),
          ("sample_dpmpp_sde", {})]


class _GradDenoiser(torch.nn.Module):
    """A network with trainable parameters: outside no_grad its output requires grad."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, dtype=F64)

    def forward(self, x, sigma):
        return den(x, sigma) + 0.0 * self.lin(x)


def test_samplers_run_under_no_grad_on_the_fused_path(monkeypatch):
    model = _GradDenoiser()
    x = start(GRID0, n=8)
    assert model(x, GRID0[0].expand(8)).requires_grad  # the premise: this model builds a graph
    calls = []
    real = Plan.step_reference
    monkeypatch.setattr(Plan, "step_reference", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    for fn, opts in PLAN_SAMPLERS:
        torch.manual_seed(0)
        out = getattr(DK, fn)(model, x, GRID0, disable=True, **opts)
        assert not out.requires_grad, fn
        assert calls == [], f"{fn}: {len(calls)} steps fell back to the reference path"
    for fn, opts in KSTYLE:
        torch.manual_seed(0)
        assert not getattr(DK, fn)(model, x, GRID0, disable=True, **opts).requires_grad, fn
    assert not DK.sample_dpm_fast(model, x, 0.03, 14.6, 7, disable=True).requires_grad
    assert calls == [], "sample_dpm_fast (eta=0, diffcore's dpm_solver_fast plan) fell back"
    assert not DK.sample_dpm_adaptive(model, x, 0.03, 14.6, disable=True).requires_grad
    assert torch.is_grad_enabled()  # the decorator restores the caller's mode


# -- 2. k-diffusion's samplers and helpers ----------------------------------------------------------

ANCESTRAL = [("sample_dpm_2_ancestral", {}), ("sample_dpm_2_ancestral", {"eta": 0.6, "s_noise": 1.1}),
             ("sample_dpm_2_ancestral", {"eta": 0.0}),
             ("sample_dpmpp_2s_ancestral", {}), ("sample_dpmpp_2s_ancestral", {"eta": 0.5, "s_noise": 0.9}),
             ("sample_dpmpp_sde", {}), ("sample_dpmpp_sde", {"eta": 0.7, "r": 0.3}), ("sample_dpmpp_sde", {"eta": 0.0}),
             ("sample_lms", {}), ("sample_lms", {"order": 2}), ("sample_lms", {"order": 1}), ("sample_lms", {"order": 6})]


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("case", ANCESTRAL, ids=lambda c: c[0] + "".join(f"-{k}={v}" for k, v in c[1].items()))
def test_new_samplers_equal_k_diffusion(case, grid_name):
    kds = kdiff()
    fn, opts = case
    if fn == "sample_lms":
        pytest.importorskip("scipy")  # k-diffusion's sample_lms integrates with scipy.integrate.quad
    grid = GRIDS[grid_name]
    x = start(grid, seed=1)
    if fn != "sample_lms":
        opts = dict(opts, noise_sampler=keyed(x))
    got, want = [], []
    out = getattr(DK, fn)(den, x, grid, disable=True, callback=got.append, **opts)
    ref = getattr(kds, fn)(den, x, grid, disable=True, callback=want.append, **opts)
    assert ref.abs().max().item() > 0.1
    assert out.dtype == F64 and close(out, ref)
    assert len(got) == len(want) == grid.shape[0] - 1
    for g, w in zip(got, want):
        assert set(g) == set(w) and g["i"] == w["i"] and float(g["sigma"]) == float(w["sigma"])
        assert close(g["x"], w["x"]) and close(g["denoised"], w["denoised"])


def test_lms_progress_bar_counts_every_step(capsys):
    """The fused DEIS steps and the final step to σ = 0 share one bar of len(sigmas) − 1 steps."""
    DK.sample_lms(den, start(GRID0), GRID0, disable=False)
    err = capsys.readouterr().err
    assert "8/8" in err and "7/7" not in err


def test_ancestral_samplers_consume_torch_rng_as_k_diffusion():
    """Default noise torch.randn_like(x) in k-diffusion's order: same seed, same sample, same generator
    state afterwards."""
    kds = kdiff()
    x = start(GRID0, seed=2)
    for fn in ("sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral"):
        torch.manual_seed(5)
        ref = getattr(kds, fn)(den, x, GRID0, disable=True)
        after_ref = torch.rand(3)
        torch.manual_seed(5)
        out = getattr(DK, fn)(den, x, GRID0, disable=True)
        assert close(out, ref) and torch.equal(torch.rand(3), after_ref), fn


def test_eta0_ancestral_is_diffcore_dpmpp_2s():
    x = start(GRID0, seed=3)
    for grid in GRIDS.values():
        a = DK.sample_dpmpp_2s_ancestral(den, x, grid, disable=True, eta=0.0)
        assert close(a, DK.sample_dpmpp_2s(den, x, grid, disable=True), 1e-11)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 10])
def test_dpm_fast_equals_k_diffusion(n):
    kds = kdiff()
    x = start(GRID0, seed=4)
    for opts in ({}, {"eta": 0.5, "s_noise": 1.1}):
        if opts:
            opts = dict(opts, noise_sampler=keyed(x))
        got, want = [], []
        with default_f64():
            ref = kds.sample_dpm_fast(den, x, 0.03, 14.6, n, disable=True, callback=want.append, **opts)
        out = DK.sample_dpm_fast(den, x, 0.03, 14.6, n, disable=True, callback=got.append, **opts)
        assert close(out, ref), opts
        assert len(got) == len(want) == (n // 3 + 1 if n % 3 else n // 3 + 1)
        for g, w in zip(got, want):
            assert set(g) == set(w) and g["i"] == w["i"]
            assert float(g["sigma"]) == pytest.approx(float(w["sigma"]), rel=1e-14)
            assert close(g["denoised"], w["denoised"])


def test_dpm_fast_model_calls():
    calls = []
    DK.sample_dpm_fast(lambda x, s: (calls.append(1), den(x, s))[1], start(GRID0), 0.03, 14.6, 10, disable=True)
    assert len(calls) == 10


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_equals_k_diffusion(order):
    kds = kdiff()
    x = start(GRID0, seed=5)
    for opts in ({}, {"rtol": 0.01, "atol": 0.001, "pcoeff": 0.1, "dcoeff": 0.05},
                 {"eta": 0.4, "noise_sampler": None}):
        if "noise_sampler" in opts:
            opts = dict(opts, noise_sampler=keyed(x))
        with default_f64():
            ref, rinfo = kds.sample_dpm_adaptive(den, x, 0.03, 14.6, disable=True, order=order, return_info=True,
                                                 **opts)
        out, info = DK.sample_dpm_adaptive(den, x, 0.03, 14.6, disable=True, order=order, return_info=True, **opts)
        assert info == rinfo and info["n_accept"] > 3, (info, rinfo)
        assert close(out, ref), opts


def test_dpm_adaptive_reverse_and_callbacks():
    """σ_min > σ_max integrates the ODE backwards (encoding), as k-diffusion; callbacks carry the same
    keys and values."""
    kds = kdiff()
    x = start(GRID0, seed=6) * 0.03 / 14.6
    got, want = [], []
    with default_f64():
        ref = kds.sample_dpm_adaptive(den, x, 1.0, 0.05, disable=True, callback=want.append)
    out = DK.sample_dpm_adaptive(den, x, 1.0, 0.05, disable=True, callback=got.append)
    assert close(out, ref)
    assert len(got) == len(want) > 2
    for g, w in zip(got, want):
        assert set(g) == set(w) and g["i"] == w["i"] and g["h"] == pytest.approx(w["h"], rel=1e-12)


def test_helpers_equal_k_diffusion():
    kds = kdiff()
    x = start(GRID0, seed=7).reshape(8, 4, 2)
    d = den(x.reshape(-1, 2), torch.full((32,), 2.0, dtype=F64)).reshape(8, 4, 2)
    for sigma in (torch.full((8,), 2.0, dtype=F64), torch.linspace(0.5, 3, 8, dtype=F64)):
        assert torch.equal(DK.to_d(x, sigma, d), kds.to_d(x, sigma, d))
    for a, b, eta in ((3.0, 1.5, 1.0), (3.0, 1.5, 0.3), (1.0, 0.999, 2.0), (2.0, 0.0, 1.0), (2.0, 1.0, 0.0)):
        assert DK.get_ancestral_step(a, b, eta) == pytest.approx(kds.get_ancestral_step(a, b, eta), rel=1e-15)
        ta, tb = torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)
        got, want = DK.get_ancestral_step(ta, tb, eta), kds.get_ancestral_step(ta, tb, eta)
        assert [float(v) for v in got] == pytest.approx([float(v) for v in want], rel=1e-15)
    sd, su = DK.get_ancestral_step(3.0, 1.5, 1.0)
    assert sd ** 2 + su ** 2 == pytest.approx(1.5 ** 2, rel=1e-14)          # back on the marginal
    assert su == pytest.approx(1.5 * math.sqrt(1 - 1.5 ** 2 / 3.0 ** 2), rel=1e-14)  # DDPM posterior std


# -- BrownianTreeNoiseSampler ---------------------------------------------------------------------

def test_brownian_noise_sampler_law():
    """Normalized increments are N(0, 1), disjoint ones independent, overlapping ones correlated as
    Brownian motion's (Cov(W(c) − W(a), W(c) − W(b)) = c − b), and increments add up."""
    n = 50_000
    x = torch.zeros(n, dtype=F64)
    ns = DK.BrownianTreeNoiseSampler(x, 0.02, 20.0, seed=1234)
    assert ns.tree.shape == (n,)
    a, b, c = 0.5, 2.0, 7.5
    z_ab, z_bc, z_ac = ns(a, b), ns(b, c), ns(a, c)
    k = 4.5 / math.sqrt(n)  # 4.5 standard errors: chance < 1e-5 per bound
    for z in (z_ab, z_bc, z_ac):
        assert z.shape == x.shape and z.dtype == F64
        assert abs(z.mean().item()) < k
        assert abs(z.var().item() - 1) < 4.5 * math.sqrt(2 / n)
    assert abs((z_ab * z_bc).mean().item()) < k
    rho = math.sqrt((c - b) / (c - a))
    assert abs((z_ac * z_bc).mean().item() - rho) < 4.5 * math.sqrt((1 + rho ** 2) / n)
    # W(c) − W(a) = (W(b) − W(a)) + (W(c) − W(b)), up to rounding
    assert close(z_ac * math.sqrt(c - a), z_ab * math.sqrt(b - a) + z_bc * math.sqrt(c - b), 1e-12)
    # direction: swapping the ends flips the sign; queries are deterministic in any order
    assert torch.equal(ns(b, a), -z_ab) and torch.equal(ns(a, b), z_ab)


def test_brownian_noise_sampler_matches_k_interface_and_law():
    """The same constructor and call as k-diffusion's (torchsde-backed) class, and the same law: the
    correlation of overlapping increments agrees with torchsde's to sampling error."""
    kds = kdiff()
    n = 20_000
    x = torch.zeros(n, 1, dtype=torch.float32)
    ours = DK.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=7)
    theirs = kds.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=7)
    for ns in (ours, theirs):
        z1, z2 = ns(torch.tensor(8.0), torch.tensor(1.0)), ns(torch.tensor(8.0), torch.tensor(4.0))
        assert z1.shape == x.shape and z1.dtype == torch.float32
        assert abs((z1 * z2).mean().item() - math.sqrt(4 / 7)) < 4.5 * math.sqrt((1 + 4 / 7) / n)
    # per-sample seeds: a sample's path follows its seed, not its batch position
    xs = torch.zeros(3, 5, dtype=F64)
    p = DK.BrownianTreeNoiseSampler(xs, 0.1, 10.0, seed=[11, 12, 13])(5.0, 2.0)
    q = DK.BrownianTreeNoiseSampler(xs, 0.1, 10.0, seed=[13, 11, 99])(5.0, 2.0)
    assert torch.equal(p[0], q[1]) and torch.equal(p[2], q[0]) and not torch.equal(p[1], q[2])


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde, on k's σ recomputed an ulp outside
def test_dpmpp_sde_default_noise_is_the_diffcore_tree():
    """The default noise is BrownianTreeNoiseSampler over the grid's positive range, its seed drawn
    from torch's global generator as k-diffusion's; k-diffusion's own tree sampler plugs in unchanged."""
    x = start(GRID0, seed=8)
    torch.manual_seed(3)
    out = DK.sample_dpmpp_sde(den, x, GRID0, disable=True)
    torch.manual_seed(3)
    ns = DK.BrownianTreeNoiseSampler(x, float(GRID0[-2]), float(GRID0[0]), seed=default_seed())
    assert torch.equal(out, DK.sample_dpmpp_sde(den, x, GRID0, disable=True, noise_sampler=ns))
    kds = kdiff()
    ref = kds.sample_dpmpp_sde(den, x, GRID0, disable=True,
                               noise_sampler=kds.BrownianTreeNoiseSampler(x, GRID0[-2], GRID0[0], seed=4))
    got = DK.sample_dpmpp_sde(den, x, GRID0, disable=True,
                              noise_sampler=kds.BrownianTreeNoiseSampler(x, GRID0[-2], GRID0[0], seed=4))
    assert close(got, ref)


# -- bad input ------------------------------------------------------------------------------------

def test_bad_input():
    x = start(GRID0)
    with pytest.raises(ValueError, match="order: expected a positive int"):
        DK.sample_lms(den, x, GRID0, disable=True, order=0)
    with pytest.raises(ValueError, match="eta: expected a finite number >= 0"):
        DK.sample_dpmpp_2s_ancestral(den, x, GRID0, disable=True, eta=-0.5)
    with pytest.raises(ValueError, match="eta: expected"):
        DK.get_ancestral_step(2.0, 1.0, float("nan"))
    with pytest.raises(ValueError, match="sigma_from: expected a noise level > 0"):
        DK.get_ancestral_step(0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="r: expected"):
        DK.sample_dpmpp_sde(den, x, GRID0, disable=True, r=0.0)
    with pytest.raises(ValueError, match="sigmas: expected strictly decreasing"):
        DK.sample_dpm_2_ancestral(den, x, GRID0.flip(0), disable=True)
    with pytest.raises(ValueError, match="noise_sampler: expected a tensor of x's shape"):
        DK.sample_dpm_2_ancestral(den, x, GRID0, disable=True, noise_sampler=lambda s, t: torch.zeros(2))
    with pytest.raises(TypeError, match="noise_sampler: expected a callable"):
        DK.sample_dpmpp_sde(den, x, GRID0, disable=True, noise_sampler=5)
    with pytest.raises(ValueError, match="model: expected the denoised sample"):
        DK.sample_lms(lambda x, s: x[:1], x, GRID0, disable=True)
    with pytest.raises(ValueError, match="sigma_min: expected a finite number > 0"):
        DK.sample_dpm_fast(den, x, 0.0, 14.6, 5, disable=True)
    with pytest.raises(ValueError, match="n: expected a positive int"):
        DK.sample_dpm_fast(den, x, 0.03, 14.6, 0, disable=True)
    with pytest.raises(ValueError, match="eta: expected 0 for reverse sampling"):
        DK.sample_dpm_fast(den, x, 14.6, 0.03, 5, disable=True, eta=0.5)
    with pytest.raises(ValueError, match="order: expected 2 or 3"):
        DK.sample_dpm_adaptive(den, x, 0.03, 14.6, disable=True, order=1)
    with pytest.raises(ValueError, match="rtol: expected a finite number > 0"):
        DK.sample_dpm_adaptive(den, x, 0.03, 14.6, disable=True, rtol=0.0)
    with pytest.raises(ValueError, match="seed: expected one seed per sample"):
        DK.BrownianTreeNoiseSampler(x, 0.1, 1.0, seed=[1, 2])
    with pytest.raises(ValueError, match="sigma_min, sigma_max: expected two distinct"):
        DK.BrownianTreeNoiseSampler(x, 1.0, 1.0)
    ns = DK.BrownianTreeNoiseSampler(x, 0.1, 1.0, seed=0)
    with pytest.raises(ValueError, match="sigma_next: expected a noise level inside"):
        ns(0.5, 2.0)
    with pytest.raises(ValueError, match="sigma, sigma_next: expected two different"):
        ns(0.5, 0.5)


def test_dpmpp_sde_single_step_to_zero():
    """One step to σ = 0 is an Euler step (k-diffusion's), with no Brownian tree to build."""
    x = start(GRID0)
    grid = torch.tensor([2.0, 0.0], dtype=F64)
    out = DK.sample_dpmpp_sde(den, x, grid, disable=True)
    assert close(out, x + (x - den(x, grid[0].expand(32))) / 2.0 * (0.0 - 2.0))


def test_dpm_adaptive_nan_model_raises_instead_of_hanging():
    """A NaN error estimate would make k-diffusion's step size NaN and its loop spin forever."""
    expect_error("""
import torch, diffcore.k as K
x = torch.randn(4, 2, dtype=torch.float64)
K.sample_dpm_adaptive(lambda x, s: x * float('nan'), x, 0.03, 14.6, disable=True)
""", "ValueError", "model", "not finite")


# -- 3. the install path of k-diffusion's sampling module -----------------------------------------

# import name -> the distribution that provides it, for every module k-diffusion's package imports
_DIST = {"skimage": "scikit-image", "cleanfid": "clean-fid", "clip": "clip-anytorch", "PIL": "Pillow",
         "pkg_resources": "setuptools"}
_STDLIB_OR_CORE = {"torch", "numpy", "k_diffusion"}


def _extra(name: str):
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf'^{re.escape(name)} = \[(.*?)\]', text, re.M | re.S)
    assert m, f"pyproject.toml lost its {name} extra"
    return [re.split(r"[<>=!;\[ ]", s.strip().strip('"'))[0].lower() for s in m.group(1).split(",") if s.strip()]


def test_k_diffusion_extra_covers_every_import_of_its_package():
    """``import k_diffusion.sampling`` runs the package ``__init__``, which imports every module of the
    package (its training stack included): the ``k-diffusion-sampling`` extra must provide each
    module-level import they make, plus ``pkg_resources`` that clip-anytorch imports (imports inside
    functions, e.g. wandb, kornia, flash_attn, serve training only)."""
    import importlib.util
    import sys
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed")
    pkg = pathlib.Path(spec.submodule_search_locations[0])
    needed = {"pkg_resources"}
    for f in pkg.rglob("*.py"):
        for node in ast.parse(f.read_text()).body:  # module level: what importing the package runs
            if isinstance(node, ast.Import):
                needed |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                needed.add(node.module.split(".")[0])
    third = {m for m in needed if m not in sys.stdlib_module_names and m not in _STDLIB_OR_CORE}
    extra = set(_extra("k-diffusion-sampling"))
    missing = sorted(m for m in third if _DIST.get(m, m).lower() not in extra)
    assert not missing, f"the k-diffusion-sampling extra lacks {missing}"


def test_import_k_diffusion_sampling_with_the_extra_installed():
    """With k-diffusion (--no-deps) and the extra installed, the plain import works (skipped where one
    of them is missing or broken, e.g. a CUDA torchvision wheel beside a CPU torch)."""
    import importlib.util
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed")
    for mod in ("torchsde", "torchdiffeq", "scipy", "einops", "skimage", "jsonmerge", "cleanfid", "clip",
                "dctorch", "torchvision", "pkg_resources"):
        try:
            __import__(mod)
        except Exception as e:  # noqa: BLE001 — any broken dependency: not this test's subject
            pytest.skip(f"{mod} not importable ({type(e).__name__}: {e}); install the k-diffusion-sampling extra")
    expect_ok("import k_diffusion.sampling as s; assert callable(s.sample_dpmpp_2m)")


def test_float32_keeps_dtype_and_agrees_with_k_diffusion():
    """Float32 in, float32 out; against k-diffusion under its float32 defaults the samples agree to
    float32 rounding (ours computes DPM-Solver's λ-times in float64, k-diffusion in float32)."""
    kds = kdiff()
    grid = DK.get_sigmas_karras(8, 0.03, 14.6)
    x = start(grid).float()

    def m(x, s):
        return den(x.double(), s.double()).float()
    runs = [(fn, (grid,), {} if fn == "sample_lms" else {"noise_sampler": keyed(x)})
            for fn in ("sample_lms", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde")]
    runs += [("sample_dpm_fast", (0.03, 14.6, 10), {}), ("sample_dpm_adaptive", (0.03, 14.6), {})]
    for fn, args, opts in runs:
        if fn == "sample_lms":
            pytest.importorskip("scipy")
        out = getattr(DK, fn)(m, x, *args, disable=True, **opts)
        ref = getattr(kds, fn)(m, x, *args, disable=True, **opts)
        assert out.dtype == torch.float32, fn
        assert (out - ref).abs().max().item() < 1e-4 * ref.abs().max().item(), fn
