"""Built-in agent environments, one per file; each exposes a Task (problems + verifier) and an Env."""
