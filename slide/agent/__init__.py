"""Multi-turn agent episodes: the environment contract (env.py), the episode runner (episode.py) and the
built-in environments (envs/: calculator, function_call, python_exec, and the latency wrapper)."""
from slide.agent.env import Env, EnvFactory, InvalidCall, StepResult, check_call, tool_schema, validate_tools
from slide.agent.episode import AgentSample, encode_conversation, episode_stats, run_episodes

__all__ = ["AgentSample", "Env", "EnvFactory", "InvalidCall", "StepResult", "check_call", "encode_conversation",
           "episode_stats", "run_episodes", "tool_schema", "validate_tools"]
