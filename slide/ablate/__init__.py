"""`slide ablate NAME`: the GLM-4.5 RL lessons and the importance corrections, each one command that runs every arm.

Names: token-mean, single-stage, curriculum, data-quality, temperature, importance (slide/ablate/specs.py).
"""
from slide.ablate.specs import ABLATIONS

__all__ = ["ABLATIONS"]
