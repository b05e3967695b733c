"""`slide ablate NAME`: the GLM-4.5 RL lessons, each reproduced by one command that runs both arms.

Names: token-mean, single-stage, curriculum, data-quality, temperature (slide/ablate/specs.py).
"""
from slide.ablate.specs import ABLATIONS

__all__ = ["ABLATIONS"]
