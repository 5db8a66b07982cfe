"""diffcore: a compiled ODE/SDE core for diffusion and flow models.

Layers (docs/design.md): ``_ops`` (the compiled core) ← ``schedules`` ← ``grids``/``param``/``oracles``/``solvers``
← ``sample``/``likelihood``/``losses``/``coupling`` ← ``train`` ← ``cli``/``demo``.
"""
from ._version import __version__
from ._ops import build_info, set_num_threads, get_num_threads, lincomb
from . import schedules
from .schedules import Schedule
from .grids import timesteps
from . import param, oracles, metrics
from .param import ModelWrapper, canonical_prediction, convert
from . import solvers
from .guidance import CFG
from . import noise
from .sample import sample, prior_sample
from . import parallel
from .parallel import ParallelConfig
from . import likelihood
from .likelihood import log_likelihood, bits_per_dim, ddpm_bound, ddpm_coefficients
from . import timesampling, paths, losses, coupling
from . import models, data, train
from .loading import load, LoadedModel
from . import ot
from . import ems
from .ems import EMS
from . import control, align, distill
from . import k, integrations, grids, convergence, guidance, thresholding, adapters

__all__ = ["__version__", "load", "LoadedModel", "adapters", "ems", "EMS", "control", "align", "distill", "build_info", "set_num_threads", "get_num_threads", "lincomb", "schedules", "Schedule", "timesteps",
           "param", "oracles", "metrics", "ModelWrapper", "canonical_prediction", "convert",
           "solvers", "CFG", "noise", "sample", "prior_sample", "parallel", "ParallelConfig", "likelihood", "log_likelihood", "bits_per_dim",
           "ddpm_bound", "ddpm_coefficients", "timesampling", "paths", "losses", "coupling", "models", "data", "train", "ot",
           "k", "integrations", "grids", "convergence", "guidance", "thresholding"]
