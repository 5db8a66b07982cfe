"""Device arguments: every spelling of one device normalizes to the indexed device a tensor reports
(a tensor on the first GPU says ``cuda:0``, never ``cuda``), so plans, noise and caches built from a
user's ``device="cuda"`` accept that user's tensors. Plain Python: the CUDA branches are exercised by
monkeypatching torch.cuda's queries, no GPU needed."""
import numpy as np
import pytest
import torch

import diffcore
from diffcore import schedules, solvers
from diffcore._device import as_device

CPU = torch.device("cpu")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with 4 GPUs whose current device is 3 (as after torch.cuda.set_device(3))."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.fixture
def no_cuda(monkeypatch):
    """No usable CUDA: querying the driver would be an error, so normalization must not do it."""
    def boom():
        raise AssertionError("the CUDA driver was queried although CUDA is not available")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", boom)
    monkeypatch.setattr(torch.cuda, "device_count", boom)


@pytest.mark.parametrize("spelling", [None, "cpu", "cpu:0", CPU, torch.device("cpu", 0)])
def test_cpu_spellings_are_one_device(spelling):
    dev = as_device(spelling)
    assert dev == torch.empty(0).device == CPU and dev.index is None


def test_none_defers_when_asked():
    assert as_device(None, default=None) is None
    assert as_device(None, default="cuda:2") == torch.device("cuda", 2)


def test_cuda_spellings_on_a_gpu_machine(fake_cuda):
    want = torch.device("cuda", 3)
    for spelling in ("cuda", torch.device("cuda"), "cuda:3", torch.device("cuda", 3), 3, np.int64(3)):
        dev = as_device(spelling)
        assert dev == want and dev.index == 3, spelling
    assert as_device("cuda:1") == torch.device("cuda", 1) != want
    assert as_device("cuda") == as_device("cuda:3")  # the comparison the plan/state check makes
    assert str(as_device("cuda")) == "cuda:3"        # and the form cache keys are built from


def test_cuda_without_a_driver_normalizes_to_cuda0(no_cuda):
    assert as_device("cuda") == torch.device("cuda", 0)
    assert as_device(torch.device("cuda")) == torch.device("cuda", 0)
    assert as_device("cuda:5") == torch.device("cuda", 5)  # no count to check against: torch decides later
    assert as_device(0) == torch.device("cuda", 0)


def test_cuda_index_beyond_the_machine_is_refused(fake_cuda):
    with pytest.raises(ValueError, match=r"device: .*below 4.*'cuda:4'"):
        as_device("cuda:4")
    with pytest.raises(ValueError, match=r"plan_device: .*below 4"):
        as_device(7, "plan_device")


@pytest.mark.parametrize("bad,exc,words", [
    ("gpu", ValueError, ["'gpu'", "'cuda'"]),
    ("", ValueError, ["''"]),
    ("cuda:x", ValueError, ["'cuda:x'"]),
    (-1, ValueError, ["non-negative", "-1"]),
    (True, TypeError, ["bool"]),
    (1.5, TypeError, ["float"]),
    ([0], TypeError, ["list"]),
    (object(), TypeError, ["object"]),
])
def test_garbage_is_rejected_naming_the_argument(bad, exc, words):
    with pytest.raises(exc) as info:
        as_device(bad, "my_device")
    msg = str(info.value)
    assert msg.startswith("my_device: ")
    for w in words:
        assert w in msg


# -- the API edges ------------------------------------------------------------------------------------

SCHED = schedules.VPLinear()


@pytest.mark.parametrize("name", ["dpmpp_2m", "ddim", "euler_ancestral"])
def test_plans_accept_a_cpu_x_under_every_cpu_spelling(name):
    """``cpu:0`` is the CPU analogue of the GPU bug: torch.device('cpu', 0) != torch.device('cpu')."""
    grid = diffcore.timesteps(SCHED, 5)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = lambda u, t: 0.3 * u + t[:, None]  # noqa: E731
    outs = []
    for spelling in (None, "cpu", CPU, "cpu:0", torch.device("cpu", 0)):
        plan = solvers.get(name).plan(SCHED, grid, device=spelling, dtype=torch.float64)
        assert plan.device == CPU
        st = plan.init_state(x, diffcore.noise.Noise(seed=1))
        for i in range(plan.num_steps):
            for s in plan.stages(i):
                plan.step(st, i, s, model(st.model_input(s), plan.model_time(i, s).expand(4)))
        outs.append(st.x)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


@pytest.mark.parametrize("call", [
    lambda d: solvers.get("dpmpp_2m").plan(SCHED, diffcore.timesteps(SCHED, 3), device=d),
    lambda d: diffcore.prior_sample(SCHED, (2, 3), device=d),
    lambda d: diffcore.prior_sample(SCHED, (2, 3), seed=1, device=d),
    lambda d: diffcore.noise.philox_normal((2, 3), 1, device=d),
    lambda d: diffcore.noise.BrownianTree(0.0, 1.0, (2, 3), seed=1, device=d),
    lambda d: diffcore.k.get_sigmas_karras(4, 0.1, 10.0, device=d),
    lambda d: diffcore.ddpm_coefficients(schedules.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 10)), device=d),
], ids=["plan", "prior_sample", "prior_sample_seed", "philox_normal", "BrownianTree", "k_sigmas",
        "ddpm_coefficients"])
def test_api_edges_normalize_their_device(call):
    with pytest.raises(ValueError, match=r"^device: .*'gpu'"):
        call("gpu")
    out = call("cpu:0")
    dev = getattr(out, "device", None)
    if dev is None and hasattr(out, "coef_xt"):
        dev = out.coef_xt.device
    assert dev == CPU and dev.index is None
