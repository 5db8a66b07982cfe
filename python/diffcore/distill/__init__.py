"""Distillation and few-step generators (book Ch. 10–11; SiD, Zhou et al. 2024; FGM, Huang et al. 2024;
MonoFlow, Yi et al. 2023).

* trajectory distillation: :mod:`.progressive` (progressive and guided progressive distillation);
* consistency and flow maps: :mod:`.consistency` (CD / CT, discrete time), :mod:`.scm` (continuous
  time, TrigFlow), :mod:`.ctm` (Consistency Trajectory Models), :mod:`.meanflow` (MeanFlow);
* distribution-level distillation: :mod:`.score_distill` (VSD/DMD, SiD, FGM), :mod:`.monoflow`;
* :mod:`.jvp` (forward-mode or finite-difference JVPs) and :mod:`.students` (few-step samplers that
  ``diffcore.sample`` dispatches to, so teacher and student share one API).
"""
from . import jvp, progressive, guided, consistency, scm, ctm, meanflow, score_distill, monoflow, students
from .consistency import ConsistencyFunction, ConsistencyTrainer, cd_loss, ct_loss, consistency_sample
from .ctm import CTMModel, CTMTrainer, ctm_consistency_loss, ctm_dsm_loss
from .guided import ClassMixtureTeacher, GuidedProgressiveDistillation, WConditioned
from .meanflow import MeanFlowTrainer, TwoTimeMLP, meanflow_loss, meanflow_sample, meanflow_target
from .monoflow import MonoFlowTrainer
from .progressive import ProgressiveDistillation, pd_loss, pd_target
from .scm import SCMTrainer, TrigConsistency, scm_loss, scm_sample
from .score_distill import (OneStepGenerator, ScoreDistillTrainer, fake_score_loss, fgm_generator_loss,
                            sid_generator_loss, vsd_generator_loss)
from .students import ConsistencyStudent, CTMStudent, MeanFlowStudent, PDStudent, SCMStudent

__all__ = [
    "jvp", "progressive", "guided", "consistency", "scm", "ctm", "meanflow", "score_distill", "monoflow", "students",
    "ConsistencyFunction", "ConsistencyTrainer", "cd_loss", "ct_loss", "consistency_sample", "CTMModel",
    "CTMTrainer", "ctm_consistency_loss", "ctm_dsm_loss", "TwoTimeMLP", "meanflow_loss", "meanflow_sample", "meanflow_target",
    "MonoFlowTrainer", "ProgressiveDistillation", "pd_loss", "pd_target", "SCMTrainer", "TrigConsistency", "scm_loss",
    "scm_sample", "OneStepGenerator", "ScoreDistillTrainer", "fake_score_loss", "fgm_generator_loss",
    "sid_generator_loss", "vsd_generator_loss", "ConsistencyStudent", "CTMStudent", "MeanFlowStudent", "PDStudent",
    "SCMStudent", "ClassMixtureTeacher", "GuidedProgressiveDistillation", "WConditioned", "MeanFlowTrainer",
]
