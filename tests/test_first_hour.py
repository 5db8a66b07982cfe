"""The first hour: the demo, the CLI's help and examples, Ctrl-C during training, diffcore.load."""
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

import diffcore
from diffcore import cli, data, losses, models, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def keep_threads():
    """The demo and `diffcore train` set torch's thread count for small models: restore it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    return env


# ---- the demo -------------------------------------------------------------------------------------
def test_demo_trains_on_one_thread_with_progress_from_the_start(tmp_path, capsys, keep_threads):
    from diffcore import demo

    torch.set_num_threads(2)  # what a 2-core machine starts with
    demo.main(["--steps", "30", "-n", "200", "--out", str(tmp_path / "d.png")])
    out = capsys.readouterr()
    # the 116k-parameter MLP: 10 ms/step on one thread, 40-380 ms/step with two on a loaded 2-core machine
    assert torch.get_num_threads() == 1
    assert "train:" in out.err and "30/30" in out.err  # the tqdm bar, updated from step 1
    assert (tmp_path / "d.png").stat().st_size > 0


# ---- the CLI ----------------------------------------------------------------------------------------
def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for shown in ("(default: 2000)", "(default: cfm)", "(default: 0.001)", "(default: 0)", "examples:"):
        assert shown in " ".join(text.split()), shown
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    assert "(default: 20)" in capsys.readouterr().out


def _quick(cmd: str) -> list:
    """An example command with its run cut to a few steps (the test checks it runs, not its quality)."""
    argv = shlex.split(cmd)[1:]
    if argv[0] == "train":
        if "--steps" in argv:
            i = argv.index("--steps")
            argv[i + 1] = "6" if "--resume" in argv else "3"
        else:
            argv += ["--steps", "3"]
        argv += ["--batch", "16", "--no-progress"]
        if "--sample-every" in argv:
            argv[argv.index("--sample-every") + 1] = "3"
        if "digits" in argv:
            argv += ["--channels", "8"]
    else:
        argv += ["-n", "64"]
    return argv


_QUICK_EXAMPLES = [c for c, _ in cli.EXAMPLES if "digits" not in c]


def test_the_two_moons_help_examples_run(tmp_path, monkeypatch, capsys, keep_threads):
    monkeypatch.chdir(tmp_path)
    assert len(_QUICK_EXAMPLES) == 4
    for cmd in _QUICK_EXAMPLES:  # in order: the resume and sample examples use the first one's run
        assert cli.main(_quick(cmd)) == 0, (cmd, capsys.readouterr().err)
    assert diffcore.train.checkpoint.load("runs/moons/checkpoint.pt")["step"] == 6  # the resume example continued
    assert pathlib.Path("moons.png").stat().st_size > 0


@pytest.mark.slow
def test_the_digits_help_example_runs(tmp_path, monkeypatch, capsys, keep_threads):
    monkeypatch.chdir(tmp_path)
    (cmd,) = [c for c, _ in cli.EXAMPLES if "digits" in c]
    assert cli.main(_quick(cmd)) == 0, capsys.readouterr().err


def test_a_diffusion_schedule_with_the_flow_loss_says_which_loss_takes_it(tmp_path, capsys):
    rc = cli.main(["train", "--schedule", "vp_linear", "--steps", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "--schedule" in err and "--loss eps --schedule vp_linear" in err


def test_cli_threads_argument_is_checked(tmp_path, capsys):
    assert cli.main(["train", "--threads", "0", "--steps", "1", "--out", str(tmp_path)]) == 1
    assert "--threads: expected a positive" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing torch: ~10 s on a busy 2-core machine
def test_ctrl_c_during_diffcore_train_saves_and_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "diffcore.cli", "train", "--steps", "1000000", "--batch", "16", "--out", str(out),
           "--ckpt-every", "1000000", "--log-every", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.csv").exists():  # written after the first step
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == 130, stderr
    assert len(lines) == 1 and "interrupted at step" in lines[0] and "checkpoint" in lines[0], stderr
    state = train.checkpoint.load(out / "checkpoint.pt")
    step = state["step"]
    assert step >= 1 and f"step {step};" in lines[0]
    m = diffcore.load(out / "checkpoint.pt", device="cpu")
    assert m.step == step and m.sample(32, steps=4).shape == (32, 2)
    assert cli.main(["train", "--steps", str(step + 2), "--batch", "16", "--out", str(out), "--resume", "auto",
                     "--no-progress"]) == 0
    assert train.checkpoint.load(out / "checkpoint.pt")["step"] == step + 2


def _trainer(out_dir, **kw):
    torch.manual_seed(0)
    return train.Trainer(models.MLP(2, width=32, depth=2), losses.get("cfm"), data.get("two_moons"), batch_size=32,
                         seed=0, log_every=None, device="cpu", out_dir=out_dir, **kw)


def test_sigint_in_fit_stops_between_steps_saves_and_resumes_exactly(tmp_path, one_thread):
    ref = _trainer(tmp_path / "ref")
    ref.fit(6)
    t = _trainer(tmp_path / "run")
    step_once = t.train_step

    def step_then_ctrl_c():  # Ctrl-C arriving in the middle of step 3
        value = step_once()
        if t.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return value

    t.train_step = step_then_ctrl_c
    with pytest.raises(train.TrainingInterrupted) as info:
        t.fit(6)
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.step == 3 and info.value.checkpoint == tmp_path / "run" / "checkpoint.pt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    resumed = _trainer(tmp_path / "run").load(tmp_path / "run" / "checkpoint.pt")
    assert resumed.step == 3
    resumed.fit(6)  # and the run goes on as if never interrupted
    for a, b in zip(resumed.model.state_dict().values(), ref.model.state_dict().values()):
        assert torch.equal(a, b)


def test_fit_writes_a_final_checkpoint(tmp_path, one_thread):
    t = _trainer(tmp_path, ckpt_every=None)
    t.fit(4)
    assert train.checkpoint.load(tmp_path / "checkpoint.pt")["step"] == 4


# ---- diffcore.load -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moons_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("moons")
    n = torch.get_num_threads()
    try:
        assert cli.main(["train", "--steps", "30", "--batch", "64", "--width", "32", "--out", str(out),
                         "--no-progress"]) == 0
    finally:
        torch.set_num_threads(n)
    return out / "checkpoint.pt"


def test_load_returns_a_ready_model_that_samples_like_diffcore_sample(moons_ckpt, tmp_path, capsys):
    m = diffcore.load(moons_ckpt, device="cpu")
    assert isinstance(m, diffcore.ModelWrapper) and m.prediction == "velocity" and m.data_shape == (2,)
    assert m.step == 30 and not m.net.training
    xs = m.sample(256, solver="heun", steps=10, seed=5)
    # the same draw through the CLI (which passes the bare network with prediction=loss.prediction)
    assert cli.main(["sample", "--checkpoint", str(moons_ckpt), "--steps", "10", "-n", "256", "--seed", "5",
                     "--out", str(tmp_path / "s.png"), "--save-tensor", str(tmp_path / "s.pt"),
                     "--device", "cpu"]) == 0
    ref = torch.load(tmp_path / "s.pt")
    assert torch.allclose(xs, ref, atol=1e-5, rtol=1e-5)
    # and as a model for diffcore.sample: the wrapper supplies its own prediction type
    x = m.prior_sample(256, seed=5)
    ys = diffcore.sample(m, x, m.schedule, solver="heun", steps=10)
    assert torch.allclose(ys, ref, atol=1e-5, rtol=1e-5)
    raw = diffcore.load(moons_ckpt, ema=False, device="cpu")
    assert not all(torch.equal(a, b) for a, b in zip(raw.net.parameters(), m.net.parameters()))  # raw != EMA


def test_load_bad_inputs(moons_ckpt, tmp_path):
    with pytest.raises(TypeError, match="ema"):
        diffcore.load(moons_ckpt, ema="yes")
    with pytest.raises(ValueError, match="n: expected a positive"):
        diffcore.load(moons_ckpt, device="cpu").sample(0)
    with pytest.raises(ValueError, match="labels: the model is unconditional"):
        diffcore.load(moons_ckpt, device="cpu").sample(4, labels=torch.zeros(4, dtype=torch.long))
    t = _trainer(tmp_path)  # a Python-side Trainer stores no build configuration
    t.fit(1)
    with pytest.raises(train.CheckpointError, match="diffcore train"):
        diffcore.load(tmp_path / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        diffcore.load(tmp_path / "missing.pt")


def test_diffcore_train_uses_one_thread_for_a_small_model_and_gives_it_back(tmp_path, monkeypatch, keep_threads):
    seen = []
    step = train.Trainer.train_step
    monkeypatch.setattr(train.Trainer, "train_step", lambda self: (seen.append(torch.get_num_threads()),
                                                                   step(self))[1])
    torch.set_num_threads(2)
    assert cli.main(["train", "--steps", "1", "--batch", "8", "--out", str(tmp_path), "--no-progress"]) == 0
    assert cli.main(["train", "--steps", "2", "--batch", "8", "--out", str(tmp_path), "--no-progress",
                     "--resume", "auto", "--threads", "2"]) == 0
    assert seen == [1, 2] and torch.get_num_threads() == 2


# ---- diffusers models under the Trainer -------------------------------------------------------------------
class _FakeDiffusersNet(torch.nn.Module):
    """Records the timestep it is given and answers as diffusers' models do (an output with .sample)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = None

    def forward(self, sample, timestep, class_labels=None):
        from types import SimpleNamespace

        self.seen = (timestep.detach().clone(), class_labels)
        return SimpleNamespace(sample=sample * self.w)


def test_from_diffusers_maps_time_and_unwraps_the_output():
    fake = _FakeDiffusersNet()
    x, t = torch.randn(3, 1, 4, 4), torch.tensor([1.0, 0.5, 0.001])
    # a diffusers DDPM config's schedule: t = 1 is training index 999, t = 1/1000 index 0
    vp = diffcore.schedules.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    out = models.from_diffusers(fake, vp)(x, t)
    assert isinstance(out, torch.Tensor) and torch.equal(out, x)
    assert torch.allclose(fake.seen[0].double(), torch.tensor([999.0, 499.0, 0.0], dtype=torch.float64), atol=1e-3)
    models.from_diffusers(fake, "rectified_flow")(x, t, labels=torch.tensor([1, 2, 3]))
    assert torch.allclose(fake.seen[0], torch.tensor([1000.0, 500.0, 1.0])) and fake.seen[1].tolist() == [1, 2, 3]
    models.from_diffusers(fake, "vp_cosine", time_scale=1.0)(x, t)
    assert torch.equal(fake.seen[0], t)
    with pytest.raises(TypeError, match="model"):
        models.from_diffusers(lambda x, t: x)
    with pytest.raises(ValueError, match="time_scale"):
        models.from_diffusers(fake, time_scale=0.0)


def test_trainer_trains_a_tiny_diffusers_unet(one_thread):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    sched = diffcore.schedules.get("vp_cosine")
    images = 0.5 * torch.randn(512, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = train.Trainer(models.from_diffusers(unet, sched), losses.get("eps", schedule=sched), images, batch_size=16,
                      lr=2e-3, log_every=None, device="cpu", seed=0)
    t.fit(12)
    first, last = sum(t.history["loss"][:4]) / 4, sum(t.history["loss"][-4:]) / 4
    assert last < 0.8 * first, (first, last)  # a seeded run: measured 61.4 -> 39.2
    assert t.sample(4, solver="ddim", steps=4).shape == (4, 1, 8, 8)


def test_trainer_fits_a_small_cpu_model_on_one_thread_and_restores_the_count(tmp_path, keep_threads):
    torch.set_num_threads(2)
    seen = []
    t = _trainer(None)
    step = t.train_step
    t.train_step = lambda: (seen.append(torch.get_num_threads()), step())[1]
    t.fit(2)
    assert seen == [1, 1] and torch.get_num_threads() == 2
    t.num_threads = None
    t.fit(3)
    assert seen[-1] == 2
    with pytest.raises(ValueError, match="num_threads"):
        _trainer(None, num_threads=0)


# ---- TensorBoard ------------------------------------------------------------------------------------------
class _FakeWriter:
    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, float(value), step))


def _has_tensorboard() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_trainer_logs_the_csv_scalars_to_a_tensorboard_writer(tmp_path, one_thread):
    writer = _FakeWriter()
    t = _trainer(tmp_path, tensorboard=writer)
    t.log_every = 2
    t.fit(4)
    losses_seen = t.history["loss"]
    got = {(tag, step): v for tag, v, step in writer.calls}
    assert got[("train/loss", 2)] == pytest.approx(sum(losses_seen[:2]) / 2, rel=1e-12)
    assert got[("train/loss", 4)] == pytest.approx(sum(losses_seen[2:]) / 2, rel=1e-12)
    assert {tag for tag, _, _ in writer.calls} == {"train/loss", "train/grad_norm", "train/lr", "train/ema_decay",
                                                   "train/steps_per_s"}
    rows = (tmp_path / "metrics.csv").read_text().splitlines()  # the CSV is written as well
    assert len(rows) == 3 and rows[0].startswith("step,loss")
    t.sample_every = 1
    t.sample_n = 200
    t.fit(5)  # an evaluation: its sliced-Wasserstein figures go to the writer too
    assert ("eval/sw", 5) in {(tag, step) for tag, _, step in writer.calls}


def test_tensorboard_argument_is_checked(tmp_path):
    with pytest.raises(TypeError, match="tensorboard"):
        _trainer(tmp_path, tensorboard="yes")
    if _has_tensorboard():
        t = _trainer(tmp_path, tensorboard=True)
        t.log_every = 1
        t.fit(1)
        assert any((tmp_path / "tensorboard").iterdir())
    else:
        with pytest.raises(ImportError, match="tensorboard"):
            _trainer(tmp_path, tensorboard=True)
        t = _trainer(tmp_path)  # default: CSV only, no error
        t.log_every = 1
        t.fit(1)
        assert (tmp_path / "metrics.csv").is_file() and not (tmp_path / "tensorboard").exists()
