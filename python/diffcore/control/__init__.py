"""Sampling-time control beyond classifier-free guidance (book Ch. 8).

Every method is a model wrapper ``fn(x, t) → guided prediction`` in the wrapped model's own
prediction type: it adds ``w_t G_t`` to the model's score and converts the change exactly
(book Eq. (8.1.1): ``ε̂ − σ w G``, ``x̂ + σ²/α w G``, ``v̂ − ½ g² w G``), so any solver of
:func:`diffcore.sample` runs it unchanged (pass the wrapper as the model and the same
``prediction``). Weights follow the library's ω convention: ω = 1 on an exact ``∇ log p_t(c|x)`` is
the conditional model, ω = 0 the unconditional one (as :class:`diffcore.CFG`, book §8.3).

- book §8.2 classifier guidance: :class:`NoisyClassifier`, :func:`classifier_loss`,
  :class:`ClassifierGuidance`, :class:`GaussianClassPosterior` (exact classifier of the mixture
  oracle (M)).
- book §8.4.1 training-free loss guidance: :class:`LossGuidance` (noise space, any solver),
  :func:`loss_guided_ddim_step` / :func:`loss_guided_ddim` (book Eq. (8.4.2), data- and noise-space
  terms), :func:`noise_space_term`, :func:`data_space_update`.
- book §8.4.2 inverse problems: operators :class:`Linear`, :class:`Mask`; :class:`ScoreProjection`,
  :class:`ILVR`, :class:`DPS`; :class:`ExactGaussianLikelihood` (the exact Gaussian-prior oracle).
- book Eq. (8.1.1) building blocks: :class:`GuidedModel`, :func:`score_coefficient`, :func:`add_score_term`.
"""
from .classifier import (
                            ClassifierGuidance,
                            GaussianClassPosterior,
                            NoisyClassifier,
                            classifier_loss,
)
from .inverse import DPS, ILVR, ExactGaussianLikelihood, Linear, Mask, ScoreProjection
from .loss_guidance import (
                            GuidedModel,
                            LossGuidance,
                            add_score_term,
                            data_space_update,
                            loss_guided_ddim,
                            loss_guided_ddim_step,
                            noise_space_term,
                            score_coefficient,
)

__all__ = [
    "GuidedModel", "score_coefficient", "add_score_term",
    "NoisyClassifier", "classifier_loss", "ClassifierGuidance", "GaussianClassPosterior",
    "LossGuidance", "noise_space_term", "data_space_update", "loss_guided_ddim_step", "loss_guided_ddim",
    "Linear", "Mask", "ScoreProjection", "ILVR", "DPS", "ExactGaussianLikelihood",
]
