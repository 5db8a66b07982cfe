"""Bad checkpoints (issue 16, item 6): truncated, foreign, bit-flipped and structurally damaged files get
a CheckpointError naming the file and the defect and leave the trainer untouched; a killed save leaves
no temporary behind for long; a resume under another training configuration is refused unless asked
for; EMS files likewise; the CLI answers a bad --checkpoint with one line and status 2."""
import os
import random
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from diffcore import EMS, losses, models, schedules
from diffcore.train import CheckpointError, Trainer, checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(seed_model=0, width=16, **kw):
    torch.manual_seed(seed_model)
    loss = kw.pop("loss", None) or losses.get("cfm")
    opts = dict(batch_size=16, lr=3e-3, ema_decay=0.9, seed=5, log_every=None, device="cpu")
    opts.update(kw)
    return Trainer(models.MLP(2, width=width, depth=1), loss, "two_moons", **opts)


def _snapshot(tr: Trainer) -> dict:
    """Everything a load assigns, copied."""
    opt = tr.optimizer.state_dict()
    return {"model": {k: v.clone() for k, v in tr.model.state_dict().items()},
            "ema": {k: v.clone() for k, v in tr.ema.module.state_dict().items()}, "updates": tr.ema.updates,
            "opt_state": {i: {k: torch.as_tensor(v).clone() for k, v in s.items()} for i, s in opt["state"].items()},
            "opt_groups": repr(opt["param_groups"]), "gen": tr.generator.get_state().clone(),
            "torch_rng": torch.get_rng_state().clone(), "step": tr.step, "history": repr(tr.history),
            "stream": dict(tr.stream.state_dict())}


def _assert_unchanged(before: dict, tr: Trainer):
    after = _snapshot(tr)
    for k in ("model", "ema"):
        assert before[k].keys() == after[k].keys() and all(torch.equal(before[k][n], after[k][n]) for n in before[k]), k
    assert before["opt_state"].keys() == after["opt_state"].keys()
    for i in before["opt_state"]:
        assert all(torch.equal(v, after["opt_state"][i][k]) for k, v in before["opt_state"][i].items())
    for k in ("updates", "opt_groups", "step", "history", "stream"):
        assert before[k] == after[k], k
    assert torch.equal(before["gen"], after["gen"]) and torch.equal(before["torch_rng"], after["torch_rng"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trainer checkpoint after 3 steps, and its bytes."""
    d = tmp_path_factory.mktemp("ckpt")
    tr = _trainer()
    tr.fit(3)
    path = tr.save(d / "c.pt")
    return path, path.read_bytes()


# ---- damaged files ----------------------------------------------------------------------------------
def test_truncation_at_every_kind_of_point_names_the_file(saved, tmp_path):
    path, blob = saved
    n = len(blob)
    cuts = sorted({1, 5, 11, 12, 13, 15, 16, 17, 30, 60, 100, 200, 500, 1000, 2000, 4000, n // 3, n // 2, n - 100,
                   n - 20, n - 2, n - 1} | set(random.Random(0).sample(range(1, n), 20)))
    tr = _trainer(7)
    for cut in cuts:
        p = tmp_path / f"cut{cut}.pt"
        p.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match="truncated") as e:
            checkpoint.load(p)
        assert str(p) in str(e.value), str(e.value)
        before = _snapshot(tr)
        with pytest.raises(CheckpointError, match=re.escape(str(p)) + ".*truncated"):
            tr.load(p)
        _assert_unchanged(before, tr)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(str(empty)) + ".*empty file"):
        checkpoint.load(empty)


def test_text_zip_and_directory_are_named_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is a text file\n")
    with pytest.raises(CheckpointError, match=re.escape(str(text)) + ".*not a diffcore checkpoint"):
        checkpoint.load(text)
    old = tmp_path / "old.pt"  # a plain torch.save file: what diffcore 0.1 wrote
    torch.save({"format": "diffcore.train/1", "step": 0}, old)
    with pytest.raises(CheckpointError, match=re.escape(str(old)) + ".*older format.*diffcore.train/1"):
        checkpoint.load(old)
    with pytest.raises(CheckpointError, match="is not a file"):
        checkpoint.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.pt"))):
        checkpoint.load(tmp_path / "missing.pt")
    # an EMS file is a valid container of the wrong kind
    ems = EMS.constant(schedules.VPLinear(), 1, K=8)
    ems.save(tmp_path / "ems.pt")
    with pytest.raises(CheckpointError, match=r"holds 'diffcore.ems/2' \(DPM-Solver-v3 .*expected 'diffcore.train/2'"):
        checkpoint.load(tmp_path / "ems.pt")


def test_every_random_bit_flip_is_detected(saved, tmp_path):
    path, blob = saved
    rng = random.Random(2024)
    p = tmp_path / "flip.pt"
    for _ in range(60):
        pos, bit = rng.randrange(len(blob)), rng.randrange(8)
        b = bytearray(blob)
        b[pos] ^= 1 << bit
        p.write_bytes(bytes(b))
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(p)
        assert str(p) in str(e.value)
    # the header too: each byte of the first 120 (magic, length, JSON) flipped in its lowest bit
    for pos in range(120):
        b = bytearray(blob)
        b[pos] ^= 1
        p.write_bytes(bytes(b))
        with pytest.raises(CheckpointError):
            checkpoint.load(p)
    p.write_bytes(blob + b"\0")
    with pytest.raises(CheckpointError, match="1 bytes after"):
        checkpoint.load(p)


def _damages():
    def drop(*keys):
        def f(s):
            d = s
            for k in keys[:-1]:
                d = d[k]
            del d[keys[-1]]
        return f

    def setv(value, *keys):
        def f(s):
            d = s
            for k in keys[:-1]:
                d = d[k]
            d[keys[-1]] = value
        return f

    first = "inp.weight"
    return {
        "no model": (drop("model"), "missing key 'model'"),
        "model key": (drop("model", first), f"missing key 'model.{first}'"),
        "model extra key": (lambda s: s["model"].__setitem__("extra", torch.zeros(1)), "unexpected key 'model.extra'"),
        "model shape": (lambda s: s["model"].__setitem__(first, torch.zeros(3, 3)),
                        f"shape mismatch for 'model.{first}'"),
        "model dtype": (lambda s: s["model"].__setitem__(first, s["model"][first].double()),
                        f"dtype mismatch for 'model.{first}'"),
        "model not a tensor": (setv([1.0], "model", first), f"'model.{first}' is a list"),
        "no ema": (drop("ema"), "missing key 'ema'"),
        "ema module key": (drop("ema", "module", first), f"missing key 'ema.module.{first}'"),
        "ema updates": (drop("ema", "updates"), "missing key 'ema.updates'"),
        "no optimizer": (drop("optimizer"), "missing key 'optimizer'"),
        "optimizer state shape": (lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(2)),
                                  "shape mismatch for 'optimizer.state[0].exp_avg'"),
        "optimizer state key": (drop("optimizer", "state", 0, "exp_avg_sq"),
                                "missing key 'optimizer.state[0].exp_avg_sq'"),
        "optimizer groups": (setv([], "optimizer", "param_groups"), "'optimizer.param_groups'"),
        "optimizer group params": (lambda s: s["optimizer"]["param_groups"][0]["params"].pop(),
                                   "'optimizer.param_groups[0]'"),
        "no ranks": (setv([], "ranks"), "'ranks'"),
        "rank generator": (drop("ranks", 0, "generator"), "missing key 'ranks[0].generator'"),
        "generator size": (setv(torch.zeros(7, dtype=torch.uint8), "ranks", 0, "generator"), "'ranks[0].generator'"),
        "torch rng": (setv(torch.zeros(3), "ranks", 0, "torch"), "'ranks[0].torch'"),
        "stream": (setv({"epoch": -1}, "ranks", 0, "stream"), "'ranks[0].stream'"),
        "no history": (drop("history"), "missing key 'history'"),
        "history loss": (setv([1.0], "history", "loss"), "'history.loss' has 1 entries"),
        "history records": (setv(3, "history", "records"), "'history.records' is a int"),
        "step": (setv(-2, "step"), "'step'"),
        "no trainer config": (drop("trainer"), "missing key 'trainer'"),
        "format": (setv("diffcore.train/1", "format"), "format"),
    }


@pytest.mark.parametrize("name", list(_damages()))
def test_each_damaged_structure_leaves_the_trainer_unchanged(saved, tmp_path, name):
    damage, words = _damages()[name]
    state = checkpoint.load(saved[0])
    damage(state)
    p = checkpoint.save(state, tmp_path / "damaged.pt")  # a valid file: only its contents are wrong
    tr = _trainer(11)
    tr.fit(1)  # optimizer state exists, so a partial load would show
    before = _snapshot(tr)
    with pytest.raises(CheckpointError) as e:
        tr.load(p)
    msg = str(e.value)
    assert str(p) in msg and words in msg, msg
    _assert_unchanged(before, tr)
    # the in-memory route checks the same way
    with pytest.raises(CheckpointError, match=re.escape(words)):
        tr.load_state_dict(state)
    _assert_unchanged(before, tr)


def test_a_good_checkpoint_still_loads_after_refusals(saved):
    tr = _trainer(11)
    tr.load(saved[0])
    assert tr.step == 3 and len(tr.history["loss"]) == 3


# ---- configuration on resume ---------------------------------------------------------------------------
_CHANGES = {
    "lr": dict(lr=1e-3),
    "batch_size": dict(batch_size=32),
    "seed": dict(seed=6),
    "loss": dict(loss=losses.get("cfm", coupling="ot")),
    "betas": dict(betas=(0.8, 0.99)),
    "weight_decay": dict(weight_decay=0.01),
    "eps": dict(eps=1e-6),
    "warmup_steps": dict(warmup_steps=10),
    "grad_clip": dict(grad_clip=0.5),
    "ema_decay": dict(ema_decay=0.99),
    "precision": dict(precision="bf16"),
}


@pytest.mark.parametrize("field", list(_CHANGES))
def test_a_configuration_change_is_refused_unless_allowed(saved, field):
    tr = _trainer(3, **_CHANGES[field])
    before = _snapshot(tr)
    with pytest.raises(CheckpointError, match=rf"different training configuration.*\b{field}: saved .*, current ") as e:
        tr.load(saved[0])
    assert list(e.value.differences) == [field]
    _assert_unchanged(before, tr)
    tr.load(saved[0], allow_config_change=True)
    assert tr.step == 3
    if field in ("betas", "eps", "weight_decay"):  # the current hyperparameters apply from here on
        want = _CHANGES[field][field]
        assert all(g[field] == want for g in tr.optimizer.param_groups)
    tr.fit(4)


def test_model_config_change_is_listed_and_several_fields_at_once(saved):
    tr = _trainer(3, width=8, lr=1e-2, seed=9)
    with pytest.raises(CheckpointError) as e:
        tr.load(saved[0])
    assert set(e.value.differences) == {"lr", "seed", "model"}
    assert e.value.differences["lr"] == (3e-3, 1e-2)
    # the architecture differs, so even the override cannot restore these weights
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'model\."):
        tr.load(saved[0], allow_config_change=True)


def test_budget_logging_and_checkpoint_periods_may_change(saved, tmp_path):
    tr = _trainer(3, log_every=1, ckpt_every=2, out_dir=tmp_path / "o", sample_every=None, sample_steps=5)
    tr.load(saved[0])
    tr.fit(5)
    assert tr.step == 5


# ---- killed saves ---------------------------------------------------------------------------------------
def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    tr = _trainer()
    tr.fit(1)
    path = tr.save(tmp_path / "c.pt")
    good = path.read_bytes()
    code = textwrap.dedent(f"""
        import time, torch
        from diffcore.train import checkpoint
        calls = []
        def stall(f, blob):  # the header goes through, the payload stops half way
            calls.append(1)
            if len(calls) == 1:
                return f.write(blob)
            f.write(blob[: len(blob) // 2]); f.flush()
            print("stalled", flush=True); time.sleep(120)
        checkpoint._write = stall
        checkpoint.save({{"format": checkpoint.FORMAT, "w": torch.zeros(1 << 16)}}, {str(path)!r})
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = p.stdout.readline()
        assert line.strip() == b"stalled", (line, p.stderr.read() if p.poll() is not None else b"")
        tmps = [q for q in tmp_path.iterdir() if ".tmp." in q.name]
        assert len(tmps) == 1 and tmps[0].name.endswith(f".{p.pid}") and tmps[0].stat().st_size > 1 << 17
        # alive: another save here leaves it alone
        tr.save(tmp_path / "other.pt")
        assert tmps[0].exists()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert path.read_bytes() == good and tmps[0].exists()  # the old checkpoint is intact; the temporary stays
    assert checkpoint.load(path)["step"] == 1  # a load in the directory cleans it
    assert not tmps[0].exists()
    # and a save does too
    stale = tmp_path / tmps[0].name
    stale.write_bytes(checkpoint.MAGIC[:5])
    foreign = tmp_path / f"notes.txt.tmp.{checkpoint._host()}.{p.pid}"  # same pattern, not ours: kept
    foreign.write_text("keep me")
    tr.save(path)
    assert not stale.exists() and foreign.exists()
    assert sorted(q.name for q in tmp_path.iterdir() if ".tmp." not in q.name) == ["c.pt", "other.pt"]


# ---- EMS files ----------------------------------------------------------------------------------------------
def test_ems_load_names_the_file_checks_the_sum_and_refuses_damage(tmp_path):
    sched = schedules.VPLinear()
    ems = EMS.constant(sched, 2, K=16)
    path = tmp_path / "ems.pt"
    ems.save(path)
    back = EMS.load(path, schedule=sched)
    assert torch.equal(back.l, ems.l) and torch.equal(back.lam, ems.lam) and back.schedule == ems.schedule
    blob = path.read_bytes()
    p = tmp_path / "bad.pt"
    for cut in (3, 20, len(blob) // 2, len(blob) - 1):
        p.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match=re.escape(str(p)) + ".*truncated"):
            EMS.load(p)
    rng = random.Random(7)
    for _ in range(20):
        b = bytearray(blob)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(b))
        with pytest.raises(CheckpointError, match=re.escape(str(p))):
            EMS.load(p)
    p.write_text("lam,l,s,b\n")
    with pytest.raises(CheckpointError, match="not a diffcore checkpoint"):
        EMS.load(p)
    torch.save({"format": "diffcore.ems/1", "lam": ems.lam}, p)
    with pytest.raises(CheckpointError, match="older format"):
        EMS.load(p)
    d = {"lam": ems.lam, "l": ems.l, "s": ems.s, "b": ems.b, "schedule": ems.schedule, "info": {}}
    for key in ("l", "b"):
        bad = dict(d)
        del bad[key]
        checkpoint.save(bad, p, format="diffcore.ems/2")
        with pytest.raises(CheckpointError, match=re.escape(str(p)) + f".*missing key '{key}'"):
            EMS.load(p)
    checkpoint.save(dict(d, s=ems.s[:3]), p, format="diffcore.ems/2")
    with pytest.raises(CheckpointError, match=re.escape(str(p)) + ".*invalid statistics: s: expected shape"):
        EMS.load(p)
    with pytest.raises(CheckpointError, match=r"holds 'diffcore.train/2' \(a Trainer checkpoint\), expected"):
        tr = _trainer()
        EMS.load(tr.save(tmp_path / "trainer.pt"))
    with pytest.raises(ValueError, match="computed for"):  # the schedule check is unchanged
        EMS.load(path, schedule=schedules.VPCosine())


# ---- CLI ------------------------------------------------------------------------------------------------------
def test_cli_sample_with_a_bad_checkpoint_prints_one_line_and_exits_2(saved, tmp_path, capsys):
    path, blob = saved
    bad = tmp_path / "broken checkpoint.pt"
    bad.write_bytes(blob[: len(blob) // 2])
    missing = tmp_path / "missing.pt"
    text = tmp_path / "t.pt"
    text.write_text("hello")
    # one process end to end: status 2, one line on stderr, no traceback
    r = subprocess.run([sys.executable, "-m", "diffcore.cli", "sample", "--checkpoint", str(bad), "--device", "cpu",
                        "--out", str(tmp_path / "s.png")], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("diffcore sample: error: checkpoint") and str(bad) in r.stderr
    assert "truncated" in r.stderr
    # the other defects through main(), which is what the console script runs
    from diffcore import cli
    for target, words in ((missing, "no file"), (text, "not a diffcore checkpoint"),
                          (path, "not written by `diffcore train`")):
        assert cli.main(["sample", "--checkpoint", str(target), "--device", "cpu",
                         "--out", str(tmp_path / "s.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("diffcore sample: error:"), err
        assert str(target) in err and words in err, err


def test_cli_resume_refuses_changed_flags_unless_allowed(tmp_path, capsys):
    from diffcore import cli
    out = tmp_path / "run"
    common = ["train", "--data", "two_moons", "--batch", "16", "--width", "8", "--depth", "1", "--out", str(out),
              "--no-progress", "--device", "cpu", "--log-every", "100"]
    assert cli.main(common + ["--steps", "2", "--lr", "3e-3"]) == 0
    capsys.readouterr()
    assert cli.main(common + ["--steps", "3", "--lr", "1e-3", "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(out / "checkpoint.pt") in err
    assert "lr: saved 0.003, current 0.001" in err
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 2  # refused before anything was written
    assert cli.main(common + ["--steps", "3", "--lr", "1e-3", "--resume", "auto", "--allow-config-change"]) == 0
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 3
