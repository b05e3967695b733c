"""SLIDE: RL post-training for reasoning and agentic LLMs, following the GLM-4.5/4.6 recipe."""

__version__ = "0.1.0"
