"""Checkpoint files: checksummed, written atomically, loaded without unpickling code.

A file is a small header and a payload::

    MAGIC (12 bytes) | header length (4 bytes, little endian) | header (JSON) | payload

The payload is one ``torch.save`` of plain containers, tensors and numbers (no pickled classes), read
back with ``torch.load(weights_only=True)``; the header names the format (``diffcore.train/2`` for a
trainer, ``diffcore.ems/2`` for DPM-Solver-v3 statistics), the payload's length and its SHA-256. So a
truncated file, a file of something else and a file with flipped bits each get their own error naming
the file (:class:`CheckpointError`), before anything is unpickled or assigned: a damaged checkpoint
must fail loudly, never resume a run with weights nobody trained. The magic begins with a non-ASCII
byte and contains CR LF and ^Z, as PNG's does, so a text-mode transfer that rewrote line ends is
caught at the first bytes.

:func:`save` serializes in memory, writes ``<path>.tmp.<host>.<pid>`` in the destination directory,
fsyncs it and ``os.replace``-s it over the target: a crash or a full disk leaves either the previous
checkpoint or the new one, never a torn file. A process killed in the middle leaves its temporary
behind; the next :func:`save` or :func:`load` in that directory removes the temporaries of this host
whose process is gone (the host is in the name because a shared filesystem may hold another
machine's live temporaries, whose process ids mean nothing here).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import socket
import struct
import types
from typing import Union

import torch

__all__ = ["save", "load", "FORMAT", "CheckpointError", "clean_stale_temporaries"]

FORMAT = "diffcore.train/2"
MAGIC = b"\x89DIFFCORE\r\n\x1a"  # 12 bytes; after it a 4-byte header length, the JSON header, the payload
_LEN = struct.Struct("<I")
_MAX_HEADER = 1 << 16
_OLD_FORMATS = {"diffcore.train/1", "diffcore.ems/1"}
_KINDS = {"diffcore.train/2": " (a Trainer checkpoint)", "diffcore.ems/2": " (DPM-Solver-v3 statistics, EMS.save)"}
_TMP = re.compile(r"^(?P<name>.+)\.tmp\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)$")


class CheckpointError(ValueError):
    """A checkpoint (or statistics) file, or a state dict, that cannot be loaded. ``path`` is the file
    (or ``"state"`` for an in-memory state dict), ``problem`` what is wrong with it."""

    def __init__(self, path, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"checkpoint {path}: {problem}")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # another user's process, or unknowable: keep the file
        return True
    return True


def clean_stale_temporaries(directory: Union[str, os.PathLike]) -> list:
    """Remove the temporaries that killed saves left in ``directory``: ``<name>.tmp.<host>.<pid>`` files of
    this host whose process no longer exists and that begin like a checkpoint (so nothing else is
    touched). Returns the removed paths; errors (a read-only directory, a race with another cleaner)
    are ignored, since cleaning is a courtesy to the disk, not part of saving or loading."""
    if os.name != "posix":  # os.kill(pid, 0) is not a liveness probe elsewhere
        return []
    removed, host, me = [], _host(), os.getpid()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or m["host"] != host or int(m["pid"]) == me or _alive(int(m["pid"])):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            with open(entry.path, "rb") as f:
                head = f.read(len(MAGIC))
            if not MAGIC.startswith(head):  # not ours (an empty file is: killed before its first byte)
                continue
            os.unlink(entry.path)
            removed.append(pathlib.Path(entry.path))
        except OSError:
            pass
    return removed


def _write(f, blob: bytes) -> None:
    """Write ``blob`` to the open temporary (one function, so a test can stall a save mid-write)."""
    f.write(blob)


def save(obj: dict, path: Union[str, os.PathLike], *, format: str = FORMAT) -> pathlib.Path:
    """Atomically write ``obj`` (plain containers, tensors, numbers, strings) to ``path`` with a header
    naming ``format`` and the payload's SHA-256 (parent directories are created)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path.parent)
    buf = io.BytesIO()
    torch.save(obj, buf)  # serialized before the disk is touched: a failure here leaves no file at all
    payload = buf.getbuffer()
    header = json.dumps({"format": format, "payload_bytes": len(payload),
                         "sha256": hashlib.sha256(payload).hexdigest()}, separators=(",", ":")).encode()
    tmp = path.with_name(f"{path.name}.tmp.{_host()}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            _write(f, MAGIC + _LEN.pack(len(header)) + header)
            _write(f, payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # persist the rename itself (POSIX); not available on every platform
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def _describe_start(data: bytes) -> str:
    if data[:4] == b"PK\x03\x04":
        return ("a plain torch.save (zip) file, not a diffcore checkpoint; diffcore 0.1 wrote its checkpoints "
                f"and EMS files in that older format ({' / '.join(sorted(_OLD_FORMATS))}, no checksum), which "
                "this version does not read")
    if not data:
        return "an empty file, not a diffcore checkpoint"
    return f"not a diffcore checkpoint (it begins with {data[:16]!r})"


def read(path: Union[str, os.PathLike], format: str = FORMAT, map_location="cpu"):
    """The payload of a checkpoint file after checking its magic, length and checksum and that its
    header says ``format``; :class:`CheckpointError` naming the file and the defect otherwise."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    if not path.is_file():
        raise CheckpointError(path, "is not a file")
    clean_stale_temporaries(path.parent)
    n0 = len(MAGIC)
    with open(path, "rb") as f:
        data = f.read(64)
        if data[:n0] != MAGIC:  # decided before reading the rest: a wrong path may name a huge file
            if len(data) < n0 and data and MAGIC.startswith(data):
                raise CheckpointError(path, f"truncated: {len(data)} bytes, shorter than the file header")
            raise CheckpointError(path, _describe_start(data))
        data += f.read()
    if len(data) < n0 + _LEN.size:
        raise CheckpointError(path, f"truncated: {len(data)} bytes, shorter than the file header")
    (hlen,) = _LEN.unpack_from(data, n0)
    start = n0 + _LEN.size + hlen
    if hlen > _MAX_HEADER:
        raise CheckpointError(path, f"corrupt header (length field {hlen})")
    if len(data) < start:
        raise CheckpointError(path, f"truncated: {len(data)} bytes, the header alone needs {start}")
    try:
        header = json.loads(data[n0 + _LEN.size:start].decode("ascii"))
        fmt, size, digest = header["format"], header["payload_bytes"], header["sha256"]
        if not (isinstance(fmt, str) and isinstance(size, int) and isinstance(digest, str)):
            raise TypeError
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CheckpointError(path, "corrupt header (not the JSON diffcore writes)") from None
    if fmt != format:
        raise CheckpointError(path, f"holds {fmt!r}{_KINDS.get(fmt, '')}, expected {format!r}{_KINDS.get(format, '')}")
    have = len(data) - start
    if have < size:
        raise CheckpointError(path, f"truncated: {have} of {size} payload bytes ({len(data)} bytes in all)")
    if have > size:
        raise CheckpointError(path, f"corrupt: {have - size} bytes after the {size}-byte payload")
    payload = memoryview(data)[start:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(path, "checksum mismatch: the payload's SHA-256 differs from the one written with "
                                    "it (the file was damaged after it was saved)")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - an intact file that torch cannot read: a writer's bug, named
        raise CheckpointError(path, f"the payload passed its checksum but torch cannot read it ({e})") from e


def load(path: Union[str, os.PathLike], map_location="cpu") -> dict:
    """Read a trainer checkpoint written by :func:`save` (checked as :func:`read` does; its payload must
    be a dict with ``format`` = :data:`FORMAT`). Whether its contents fit a trainer is checked by
    :meth:`diffcore.train.Trainer.load`."""
    obj = read(path, FORMAT, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"the payload is a {type(obj).__name__}, expected a dict")
    if obj.get("format") != FORMAT:
        raise CheckpointError(path, f"the payload's format is {obj.get('format')!r}, expected {FORMAT!r}")
    return obj


# ---- what a trainer checkpoint must contain, and the configuration it was trained with ---------------
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _show(v) -> str:
    if isinstance(v, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return f"{getattr(v, '__module__', '')}.{v.__qualname__}"
    return _ADDRESS.sub("", repr(v))


def describe(obj) -> str:
    """A stable description of a loss (its type and public attributes) for comparing configurations: two
    losses built with the same options describe alike, in two processes (object addresses dropped)."""
    try:
        items = sorted((k, v) for k, v in vars(obj).items() if not k.startswith("_"))
    except TypeError:
        return _ADDRESS.sub("", repr(obj))
    body = ", ".join(f"{k}={_show(v)}" for k, v in items)
    return f"{type(obj).__qualname__}({body})"


def trainer_config(trainer) -> dict:
    """The settings that shape a training run's trajectory (compared on resume); the step budget, the
    logging, checkpoint and sampling periods, the output directory and the device are not among them."""
    d = trainer.optimizer.defaults
    model_config = getattr(trainer.model, "config", None)
    return {"loss": trainer._loss_desc, "batch_size": trainer.batch_size, "seed": trainer.seed,
            "lr": float(trainer.lr), "betas": [float(b) for b in d["betas"]], "eps": float(d["eps"]),
            "weight_decay": float(d["weight_decay"]), "warmup_steps": trainer.warmup_steps,
            "grad_clip": float(trainer.grad_clip) if trainer.grad_clip else None,
            "ema_decay": trainer.ema.decay, "ema_warmup": trainer.ema.warmup,
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype],
            "label_dropout": trainer.label_dropout,
            "model": model_config if isinstance(model_config, dict) else None}


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _more(names) -> str:
    return f"'{names[0]}'" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _check_tensors(where, name: str, saved, current: dict) -> None:
    if not isinstance(saved, dict):
        raise CheckpointError(where, f"'{name}' is a {type(saved).__name__}, expected a dict of tensors")
    missing = [f"{name}.{k}" for k in current if k not in saved]
    if missing:
        raise CheckpointError(where, f"missing key {_more(missing)}")
    unexpected = [f"{name}.{k}" for k in saved if k not in current]
    if unexpected:
        raise CheckpointError(where, f"unexpected key {_more(unexpected)} (the model has no such entry)")
    for k, v in current.items():
        s = saved[k]
        if not isinstance(s, torch.Tensor):
            raise CheckpointError(where, f"'{name}.{k}' is a {type(s).__name__}, expected a tensor")
        if s.shape != v.shape:
            raise CheckpointError(where, f"shape mismatch for '{name}.{k}': saved {tuple(s.shape)}, the model has "
                                         f"{tuple(v.shape)}")
        if s.dtype != v.dtype:
            raise CheckpointError(where, f"dtype mismatch for '{name}.{k}': saved {s.dtype}, the model has {v.dtype}")


def _check_optimizer(where, saved, opt) -> None:
    if not isinstance(saved, dict):
        raise CheckpointError(where, f"'optimizer' is a {type(saved).__name__}, expected a dict")
    for k in ("state", "param_groups"):
        if k not in saved:
            raise CheckpointError(where, f"missing key 'optimizer.{k}'")
    groups, state = saved["param_groups"], saved["state"]
    if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
        raise CheckpointError(where, f"'optimizer.param_groups': expected a list of {len(opt.param_groups)} "
                                     f"group(s), got {groups if not isinstance(groups, list) else len(groups)}")
    params = {}
    for i, (g, c) in enumerate(zip(groups, opt.param_groups)):
        ids = g.get("params") if isinstance(g, dict) else None
        if not isinstance(ids, list) or len(ids) != len(c["params"]) or not all(_is_count(j) for j in ids):
            raise CheckpointError(where, f"'optimizer.param_groups[{i}]': expected {len(c['params'])} parameter "
                                         f"ids, got {ids if not isinstance(ids, list) else len(ids)}")
        params.update(zip(ids, c["params"]))
    if not isinstance(state, dict):
        raise CheckpointError(where, f"'optimizer.state' is a {type(state).__name__}, expected a dict")
    required = {"step", "exp_avg", "exp_avg_sq"} if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) else set()
    for j, s in state.items():
        if j not in params:
            raise CheckpointError(where, f"'optimizer.state' has an entry for parameter {j!r}, which no group lists")
        if not isinstance(s, dict):
            raise CheckpointError(where, f"'optimizer.state[{j}]' is a {type(s).__name__}, expected a dict")
        absent = sorted(required - set(s))
        if absent:
            raise CheckpointError(where, f"missing key 'optimizer.state[{j}].{absent[0]}'")
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                if v.dim() > 0 and v.shape != params[j].shape:
                    raise CheckpointError(where, f"shape mismatch for 'optimizer.state[{j}].{k}': saved "
                                                 f"{tuple(v.shape)}, the parameter has {tuple(params[j].shape)}")
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                raise CheckpointError(where, f"'optimizer.state[{j}].{k}' is a {type(v).__name__}, expected a "
                                             "tensor or a number")


def _check_rng(where, name: str, saved, current: torch.Tensor) -> None:
    if not isinstance(saved, torch.Tensor) or saved.dtype != torch.uint8 or saved.shape != current.shape:
        got = f"{saved.dtype} {tuple(saved.shape)}" if isinstance(saved, torch.Tensor) else type(saved).__name__
        raise CheckpointError(where, f"'{name}': expected a generator state (uint8 {tuple(current.shape)}), got {got}")


_TOP = ("step", "model", "ema", "optimizer", "scaler", "ranks", "history", "trainer")


def check_trainer_state(trainer, state, where, allow_config_change: bool = False) -> None:
    """Everything :meth:`Trainer.load_state_dict` will assign, checked against ``trainer`` before any of
    it is: the structure, keys, shapes and dtypes, and the training configuration (a mismatch is refused
    unless ``allow_config_change``). Raises :class:`CheckpointError` naming ``where`` and the defect."""
    if not isinstance(state, dict):
        raise CheckpointError(where, f"expected a dict, got {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise CheckpointError(where, f"format is {state.get('format')!r}, expected {FORMAT!r}")
    for k in _TOP:
        if k not in state:
            raise CheckpointError(where, f"missing key '{k}'")
    saved_cfg = state["trainer"]
    if not isinstance(saved_cfg, dict):
        raise CheckpointError(where, f"'trainer' is a {type(saved_cfg).__name__}, expected a dict")
    current_cfg = trainer_config(trainer)
    diffs = [(k, saved_cfg.get(k, "<absent>"), current_cfg.get(k, "<absent>"))
             for k in list(current_cfg) + [k for k in saved_cfg if k not in current_cfg]
             if saved_cfg.get(k, "<absent>") != current_cfg.get(k, "<absent>")]
    if diffs and not allow_config_change:
        err = CheckpointError(where, "written with a different training configuration (pass allow_config_change=True "
                                     "to resume with the current one): "
                              + "; ".join(f"{k}: saved {s!r}, current {c!r}" for k, s, c in diffs))
        err.differences = {k: (s, c) for k, s, c in diffs}
        raise err
    step = state["step"]
    if not _is_count(step):
        raise CheckpointError(where, f"'step': expected an int >= 0, got {step!r}")
    _check_tensors(where, "model", state["model"], trainer.model.state_dict())
    ema = state["ema"]
    if not isinstance(ema, dict):
        raise CheckpointError(where, f"'ema' is a {type(ema).__name__}, expected a dict")
    for k in ("module", "updates"):
        if k not in ema:
            raise CheckpointError(where, f"missing key 'ema.{k}'")
    _check_tensors(where, "ema.module", ema["module"], trainer.ema.module.state_dict())
    if not _is_count(ema["updates"]):
        raise CheckpointError(where, f"'ema.updates': expected an int >= 0, got {ema['updates']!r}")
    _check_optimizer(where, state["optimizer"], trainer.optimizer)
    scaler = state["scaler"]
    if scaler is not None and not isinstance(scaler, dict):
        raise CheckpointError(where, f"'scaler' is a {type(scaler).__name__}, expected a dict or None")
    if scaler is not None and trainer.scaler is not None:
        absent = sorted(set(trainer.scaler.state_dict()) - set(scaler))
        if absent:
            raise CheckpointError(where, f"missing key 'scaler.{absent[0]}'")
    hist = state["history"]
    if not isinstance(hist, dict):
        raise CheckpointError(where, f"'history' is a {type(hist).__name__}, expected a dict")
    for k in ("loss", "grad_norm", "lr", "records", "evals"):
        if not isinstance(hist.get(k), list):
            raise CheckpointError(where, f"missing key 'history.{k}'" if k not in hist else
                                  f"'history.{k}' is a {type(hist[k]).__name__}, expected a list")
    for k in ("loss", "grad_norm", "lr"):
        if len(hist[k]) != step:
            raise CheckpointError(where, f"'history.{k}' has {len(hist[k])} entries, expected one per step ({step})")
    ranks = state["ranks"]
    if not isinstance(ranks, list) or not ranks or not all(isinstance(r, dict) for r in ranks):
        raise CheckpointError(where, "'ranks': expected a non-empty list of per-process states")
    if len(ranks) == trainer.dist.world_size:  # else the states are reseeded, not read
        r, name = ranks[trainer.dist.rank], f"ranks[{trainer.dist.rank}]"
        for k in ("generator", "torch", "stream"):
            if k not in r:
                raise CheckpointError(where, f"missing key '{name}.{k}'")
        _check_rng(where, f"{name}.generator", r["generator"], trainer.generator.get_state())
        _check_rng(where, f"{name}.torch", r["torch"], torch.get_rng_state())
        if r.get("cuda") is not None and trainer.device.type == "cuda":
            _check_rng(where, f"{name}.cuda", r["cuda"], torch.cuda.get_rng_state(trainer.device))
        cur, st = trainer.stream.state_dict(), r["stream"]
        if not isinstance(st, dict) or set(st) != set(cur) or not all(_is_count(v) for v in st.values()):
            raise CheckpointError(where, f"'{name}.stream': expected counters {sorted(cur)} (ints >= 0), got {st!r}")
