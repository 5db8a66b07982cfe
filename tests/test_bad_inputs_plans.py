"""Bad inputs at the plan / ``sample()`` edge (issue 16, items 5, 7 and 8): every refusal names the
argument, a value is judged the same whether or not the plan cache is warm, and the caches ``sample``
keeps stay bounded however many distinct batch sizes and grids it sees."""
import collections
import importlib
import threading

import numpy as np
import pytest
import torch

import diffcore
from diffcore import _ops, schedules, solvers

smod = importlib.import_module("diffcore.sample")  # the module: diffcore.sample is the function
SCHED = schedules.VPLinear()
F64 = torch.float64


def model(x, t):
    return 0.5 * x + 0.1 * t.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)


def _x(B=3, *S):
    return torch.randn((B,) + (S or (2,)), generator=torch.Generator().manual_seed(B), dtype=F64)


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty plan cache of 4 entries, so that eviction order is observable in a few calls."""
    monkeypatch.setattr(smod, "_PLANS", collections.OrderedDict())
    monkeypatch.setattr(smod, "_PLAN_CACHE_SIZE", 4)
    return smod


# -- item 5: validation happens before the cache --------------------------------------------------

@pytest.mark.parametrize("good,bad", [(2, 2.0), (1, True), (3, np.float64(3.0)), (2, torch.tensor(2.0).item())])
def test_steps_of_the_wrong_type_are_refused_cold_and_warm(fresh_cache, good, bad):
    with pytest.raises(ValueError, match=r"^steps: expected a positive int"):
        diffcore.sample(model, _x(), SCHED, solver="ddim", steps=bad)  # cold cache
    diffcore.sample(model, _x(), SCHED, solver="ddim", steps=good)  # warms the key bad compares equal to
    with pytest.raises(ValueError, match=r"^steps: expected a positive int"):
        diffcore.sample(model, _x(), SCHED, solver="ddim", steps=bad)


@pytest.mark.parametrize("bad", [0, -3, "10", None])
def test_steps_out_of_range_or_type(bad):
    with pytest.raises((ValueError, TypeError), match=r"^steps: "):
        diffcore.sample(model, _x(), SCHED, steps=bad)


def test_numpy_integer_steps_are_a_count():
    assert torch.equal(diffcore.sample(model, _x(), SCHED, steps=np.int64(4)),
                       diffcore.sample(model, _x(), SCHED, steps=4))


# -- item 7: steps as a list, per-sample grids, many dimensions ------------------------------------

@pytest.mark.parametrize("solver", ["dpmpp_2m", "euler_ancestral"])
def test_steps_as_a_list_or_array_is_the_same_grid_as_the_tensor(solver):
    times = [0.9, 0.6, 0.35, 0.1, 0.0]
    want = diffcore.sample(model, _x(), SCHED, solver=solver, steps=torch.tensor(times, dtype=F64), seed=4)
    for given in (times, tuple(times), np.array(times), np.array(times, dtype=np.float32).tolist()):
        got = diffcore.sample(model, _x(), SCHED, solver=solver, steps=given, seed=4)
        if isinstance(given, list) and given != times:  # float32-rounded times: a (slightly) different grid
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(got, want)


def test_per_sample_list_grid():
    rows = [[0.9, 0.5, 0.1], [0.8, 0.4, 0.05], [0.7, 0.3, 0.02]]
    want = diffcore.sample(model, _x(), SCHED, steps=torch.tensor(rows, dtype=F64))
    assert torch.equal(diffcore.sample(model, _x(), SCHED, steps=rows), want)


@pytest.mark.parametrize("bad,exc,words", [
    (["a", "b"], TypeError, ["sequence of times"]),
    ([[0.9, 0.5], [0.8]], TypeError, ["sequence of times"]),  # ragged
    ([0.9], ValueError, ["[M + 1]", "(1,)"]),
    ([], ValueError, ["(0,)"]),
    ([[[0.9, 0.1]]], ValueError, ["(1, 1, 2)"]),
    ([0.9, 0.2, 0.5], ValueError, ["monotone"]),
    ([0.9, float("nan"), 0.1], ValueError, ["finite"]),
    (torch.tensor([True, False]), TypeError, ["real times", "bool"]),
    (torch.tensor([0.9, 0.1], dtype=torch.complex64), TypeError, ["real times"]),
])
def test_bad_grids_name_steps(bad, exc, words):
    with pytest.raises(exc) as info:
        diffcore.sample(model, _x(), SCHED, steps=bad)
    msg = str(info.value)
    assert msg.startswith("steps: "), msg
    for w in words:
        assert w in msg, msg


def test_grid_options_with_explicit_times_are_refused():
    with pytest.raises(ValueError, match=r"^steps: .*spacing/t_start/t_end"):
        diffcore.sample(model, _x(), SCHED, steps=[0.9, 0.5, 0.1], t_end=0.1)


@pytest.mark.parametrize("parallel", [None, diffcore.ParallelConfig(window=2)])
def test_per_sample_grid_of_another_batch_names_steps(parallel):
    rows = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.4, 0.05]], dtype=F64)  # 2 samples, x has 3
    with pytest.raises(ValueError, match=r"^steps: per-sample times for 2 samples, but x has batch 3"):
        diffcore.sample(model, _x(3), SCHED, solver="dpmpp_2m", steps=rows, parallel=parallel)


def test_per_sample_grid_of_another_batch_at_the_plan_api():
    plan = solvers.get("ddim").plan(SCHED, torch.tensor([[0.9, 0.1], [0.8, 0.2]], dtype=F64))
    with pytest.raises(ValueError, match=r"^x: the plan has per-sample grids for 2 samples, x has batch 3"):
        plan.init_state(_x(3))


def _deep(ndim, B=2):
    return torch.randn((B, 3) + (1,) * (ndim - 2), generator=torch.Generator().manual_seed(ndim), dtype=F64)


def test_the_dimension_limit_is_the_kernels():
    assert _ops.MAX_DIMS == 12  # exported by the compiled core (csrc/bind/dlpack_view.h)


@pytest.mark.parametrize("solver,ndim,top", [("dpmpp_2m", 12, 11), ("dpmpp_2m", 13, 11), ("ddim", 13, 12),
                                             ("euler_ancestral", 13, 12)])
def test_too_many_dimensions_name_x_and_the_limit(solver, ndim, top):
    with pytest.raises(ValueError, match=rf"^x: expected at most {top} dimensions \(batch included\).*got {ndim}"):
        diffcore.sample(model, _deep(ndim), SCHED, solver=solver, steps=3, seed=1)
    plan = solvers.get(solver).plan(SCHED, diffcore.timesteps(SCHED, 3), dtype=F64)
    with pytest.raises(ValueError, match=rf"^x: expected at most {top} dimensions"):
        plan.init_state(_deep(ndim))


def test_too_many_dimensions_with_parallel_name_x():
    with pytest.raises(ValueError, match=r"^x: expected at most 11 dimensions .*with parallel=, got 12"):
        diffcore.sample(model, _deep(12), SCHED, solver="ddim", steps=3, parallel=diffcore.ParallelConfig(window=2))


@pytest.mark.parametrize("solver,ndim", [("dpmpp_2m", 11), ("ddim", 12)])
def test_at_the_limit_results_equal_the_flattened_run(solver, ndim):
    """The limit is not off by one: the deepest accepted x gives what the same samples give flattened."""
    x = _deep(ndim)
    got = diffcore.sample(model, x, SCHED, solver=solver, steps=4)
    flat = diffcore.sample(model, x.reshape(x.shape[0], -1), SCHED, solver=solver, steps=4)
    assert torch.equal(got.reshape(x.shape[0], -1), flat)


# -- item 8: bounded caches, least recently used evicted first -------------------------------------

def test_batch_time_cache_is_bounded_over_many_batch_sizes(fresh_cache):
    sched = schedules.VPLinear()  # its own plan
    sizes = range(1, 201)
    for B in sizes:
        diffcore.sample(model, torch.zeros(B, 1, dtype=F64), sched, solver="dpmpp_2m", steps=6)
    (entry,) = [v for v in smod._PLANS.values() if v[0] is sched]
    plan = entry[2]
    cache = plan.__dict__["_expanded"]
    assert len(cache) <= smod._BATCH_TIMES_SIZE < 16
    assert list(cache) == list(sizes)[-len(cache):]  # the most recent sizes are the ones kept
    held = sum(len(row) for times in cache.values() for row in times)
    assert held <= smod._BATCH_TIMES_SIZE * plan.num_steps * 3  # tensors, independent of how many sizes ran
    # expanded times are views of the plan's table: the cache holds no storage of its own
    ptrs = {t.untyped_storage().data_ptr() for times in cache.values() for row in times for t in row}
    assert ptrs == {plan.model_times.untyped_storage().data_ptr()}
    # a hit is the cached object and refreshes it, so an early size survives a sweep when reused
    again = smod._batch_times(plan, 200)
    assert again is cache[200]
    first = next(iter(cache))
    smod._batch_times(plan, first)
    for B in range(1000, 1000 + smod._BATCH_TIMES_SIZE - 1):
        smod._batch_times(plan, B)
    assert first in cache


def test_plan_cache_is_bounded(fresh_cache):
    for n in range(1, 12):
        diffcore.sample(model, _x(), SCHED, solver="ddim", steps=n)
        assert len(smod._PLANS) <= 4


def test_plan_cache_hit_refreshes_the_entry(fresh_cache):
    def cached_steps():
        return [v[2].num_steps for v in smod._PLANS.values()]

    diffcore.sample(model, _x(), SCHED, solver="ddim", steps=2)   # the hot plan
    hot = [v[2] for v in smod._PLANS.values()][0]
    for n in (3, 4, 5):                                           # fill the cache (4 entries)
        diffcore.sample(model, _x(), SCHED, solver="ddim", steps=n)
    diffcore.sample(model, _x(), SCHED, solver="ddim", steps=2)   # a hit: now the most recent
    diffcore.sample(model, _x(), SCHED, solver="ddim", steps=6)   # evicts the least recently used: 3
    assert sorted(cached_steps()) == [2, 4, 5, 6]
    assert any(v[2] is hot for v in smod._PLANS.values())         # the same plan object, not rebuilt
    assert cached_steps()[-1] == 6


def test_caches_survive_concurrent_sampling(fresh_cache):
    errors = []

    def work(k):
        try:
            for j in range(40):
                diffcore.sample(model, torch.zeros(1 + (k * 7 + j) % 13, 2, dtype=F64), SCHED, solver="ddim",
                                steps=2 + (j + k) % 7)
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(smod._PLANS) <= 4
