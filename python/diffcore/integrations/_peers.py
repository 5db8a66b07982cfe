"""Import k-diffusion's sampling module without its training stack.

k-diffusion 0.1.1's package ``__init__`` imports every module of the package, whose module-level
imports need skimage, jsonmerge, cleanfid, clip (and its pkg_resources), dctorch, einops, torchvision,
torchdiffeq and torchsde, so ``import k_diffusion.sampling`` fails where k-diffusion was installed with
``--no-deps`` for its samplers alone (the ``k-diffusion-sampling`` extra installs them; torchvision
must match the torch build). :func:`load_k_diffusion` then loads the installed package's
``sampling.py`` (and the ``utils.py`` it imports relatively) by path under a private parent package,
with placeholders for the imports those two files only use in functions a sampler comparison never
calls (``torchdiffeq`` in ``log_likelihood``, ``torchvision``/``PIL``/``safetensors`` in ``utils``'
image and checkpoint helpers, ``scipy`` in ``sample_lms``, which the tests compare only where scipy is
installed). A placeholder raises ``ImportError``
when one of its attributes is called, so a code path that needed the real module fails loudly
instead of computing nonsense; the placeholders are removed from ``sys.modules`` once the two files
are loaded. ``torchsde`` (``BrownianTreeNoiseSampler``) and ``tqdm`` are real imports.

Used by the tests (the peer comparisons of :mod:`diffcore.k`) and ``bench/bench_sde.py``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from typing import List, Tuple

__all__ = ["load_k_diffusion"]

#: modules k-diffusion's sampling.py / utils.py import but use only in functions no comparison calls
_KD_PLACEHOLDERS = ("torchdiffeq", "torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                    "scipy", "scipy.integrate", "PIL", "PIL.Image", "safetensors", "safetensors.torch")
_PKG = "_diffcore_k_diffusion"  # private parent package: `from . import utils` finds the real utils.py


class _Placeholder(types.ModuleType):
    """Stands in for a missing module during k-diffusion's import; any attribute is a function that
    raises, so a code path that needed the real module fails loudly instead of computing nonsense."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        name = self.__name__

        def missing(*_a, **_k):
            raise ImportError(f"{name}.{attr}: {name} is not installed (placeholder from "
                              "diffcore.integrations._peers.load_k_diffusion)")
        return missing


@functools.lru_cache(maxsize=None)
def load_k_diffusion() -> Tuple[object, str]:
    """``(k_diffusion.sampling module, how it was loaded)``, or ``(None, why not)``.

    The plain import is tried first; when it fails, ``sampling.py`` + ``utils.py`` are loaded by path
    as described in the module docstring. The result is cached (one load per process)."""
    try:
        import k_diffusion.sampling as kds  # noqa: PLC0415
        return kds, "imported"
    except Exception as e:  # noqa: BLE001 — any failure of the package import: fall back to the two files
        first = f"{type(e).__name__}: {e}"
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, "not installed"
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules[_PKG] = pkg
    added: List[str] = []
    try:
        for _ in range(len(_KD_PLACEHOLDERS) + 1):
            try:
                kds = importlib.import_module(_PKG + ".sampling")
                break
            except ModuleNotFoundError as e:
                missing = e.name or ""
                if missing not in _KD_PLACEHOLDERS or missing in sys.modules:
                    return None, f"{first}; loading sampling.py by path: {type(e).__name__}: {e}"
                mod = _Placeholder(missing)
                mod.__path__ = []  # a package, so that its submodules can be placeholders too
                sys.modules[missing] = mod
                parent, _, child = missing.rpartition(".")
                if parent:
                    setattr(sys.modules[parent], child, mod)
                added.append(missing)
        else:
            return None, f"{first}; loading sampling.py by path: too many missing modules"
    except Exception as e:  # noqa: BLE001 — e.g. a broken torchsde: report, do not raise
        return None, f"{first}; loading sampling.py by path: {type(e).__name__}: {e}"
    finally:
        for m in added:
            sys.modules.pop(m, None)
    how = f"sampling.py + utils.py loaded by path; package import fails: {first}"
    if added:
        how += "; placeholders for unused imports: " + ", ".join(m for m in added if "." not in m)
    return kds, how
