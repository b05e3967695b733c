"""Check a run's inputs before anything is written: data specs parse, datasets load, checkpoints exist and carry
a tokenizer that fits their embeddings, and the tasks suit the checkpoint's chat format."""
from __future__ import annotations

import json
from pathlib import Path

from slide.errors import UserError
from slide.tasks import parse_task_specs
from slide.tasks.user_reward import load_reward


def check_inputs(data_specs: list[str | None], model, reward: str | None = None, sft: bool = False) -> None:
    """`model`: the run's ModelSpec (init, tool_format)."""
    load_reward(reward)  # data.reward imports and names a function
    specs = [task for spec in data_specs if spec is not None for task, _ in parse_task_specs(spec)]  # file/row/item
    model_init = model.init
    if model_init is not None:
        p = Path(model_init)
        if not p.is_dir():
            raise UserError(f"model.init {model_init!r}: no such checkpoint folder")
        if not (p / "config.json").is_file():
            raise UserError(f"model.init {model_init!r}: not a Hugging Face checkpoint (no config.json)")
        _check_tokenizer(p, model_init, model.tool_format, specs, sft)


def _check_tokenizer(folder: Path, init: str, tool_format: str, tasks: list, sft: bool) -> None:
    """The checkpoint's tokenizer loads, fits the embeddings (config.json's vocab_size), has a stop token and a
    chat template that renders a prompt (and, for SFT, an assistant turn whose span can be found), and, if any
    task runs multi-turn episodes, writes tool calls in a known format and renders a round of tool results."""
    from slide.agent.families import AGENT_FAMILIES
    from slide.model.chat import chat_format
    from slide.model.load import check_vocab
    from slide.model.tokenizer import tokenizer_for

    tok = tokenizer_for(init, tool_format)
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"model.init {init!r}: config.json is not valid JSON ({e.msg})") from None
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if isinstance(rows, int):
        check_vocab(tok, rows, f"model.init {init!r}")
    if getattr(tok, "chat_template", None) is None:
        raise UserError(f"model.init {init!r}: its tokenizer has no chat template (tokenizer_config.json "
                        f"'chat_template' or chat_template.jinja); SLIDE renders every prompt with it")
    fmt = chat_format(tok)  # its stop tokens and tool format
    agentic = sorted({t.name for t in tasks if t.name in AGENT_FAMILIES})
    if agentic:
        fmt.needs_tools(f"the agentic tasks {', '.join(agentic)}")
    messages = [{"role": "user", "content": "What is 1+1?"}]
    for thinking in (True, False):
        fmt.prompt_ids(messages, thinking)  # a template error becomes one `error:` line
        if sft:
            fmt.example(messages, "1+1=2", "2", thinking)
        if agentic:  # a round of tool results renders, and the environment's turn can be told from the model's
            fmt.conversation(messages + _TOOL_ROUND, [_TOOL], thinking)


_TOOL = {"type": "function", "function": {"name": "add", "description": "Add two numbers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
_TOOL_ROUND = [{"role": "assistant", "reasoning_content": "Use the tool.", "content": "",
                "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]},
               {"role": "tool", "content": "2"},
               {"role": "assistant", "reasoning_content": "It says 2.", "content": "2"}]
