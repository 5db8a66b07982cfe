"""diffcore: a compiled ODE/SDE core for diffusion and flow models."""
from ._version import __version__
from ._ops import build_info, set_num_threads, get_num_threads, lincomb
