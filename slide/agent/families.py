"""Agentic task families: each pairs a Task (problems, verifier) with the Env its episodes run in and, where
a reference conversation can be written, a trace for cold-start SFT.

    slide rl cfg.yaml data.train=calculator:1 agent.latency_median_s=0.5

Task specs name them like any family (`calculator:1-2`, `function_call`, `python`, `lookup:1-3`); rollout, eval and SFT
look a problem's family up here to decide whether it is a multi-turn episode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from slide.agent.env import Env, EnvFactory
from slide.agent.envs import calculator, function_call, lookup, python_exec
from slide.agent.envs.latency import with_latency
from slide.agent.isolated import IsolatedEnv
from slide.callpool import CallPool
from slide.tasks.base import Problem


@dataclass(frozen=True)
class AgentFamily:
    task: type
    env: Callable[[], Env]
    trace: Callable[[Problem], dict] | None  # problem -> {"messages", "tools"}; None: no SFT traces


AGENT_FAMILIES: dict[str, AgentFamily] = {
    "calculator": AgentFamily(calculator.CalculatorTask, calculator.CalculatorEnv, calculator.trace),
    "function_call": AgentFamily(function_call.FunctionCallTask, function_call.FunctionCallEnv, function_call.trace),
    "python": AgentFamily(python_exec.PythonTask, python_exec.PythonEnv, None),
    "lookup": AgentFamily(lookup.LookupTask, lookup.LookupEnv, lookup.trace),
}


def is_agentic(problem: Problem) -> bool:
    return problem.family in AGENT_FAMILIES


def env_factory(agent, seed: int, pool: CallPool, reward_timeout_s: float) -> EnvFactory:
    """Problem -> a fresh Env of its family, its calls run in `pool`'s worker processes (IsolatedEnv); with the
    latency wrapper outside when agent.latency_median_s > 0 (the sleep stays in the episode's thread, so slow
    tools overlap instead of queueing for the pool). `agent` is the run's AgentSpec."""
    def make(problem: Problem) -> Env:
        return IsolatedEnv(AGENT_FAMILIES[problem.family].env(), pool, agent.step_timeout_s, reward_timeout_s)

    if agent.latency_median_s > 0:
        return with_latency(make, agent.latency_median_s, agent.latency_sigma, agent.latency_cap_s, seed)
    return make
