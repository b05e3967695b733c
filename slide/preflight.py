"""Check a run's inputs before anything is written: data specs parse, datasets load, checkpoints exist and carry
a tokenizer that fits their embeddings, and the tasks suit the checkpoint's chat format."""
from __future__ import annotations

import json
from pathlib import Path

from slide.errors import UserError
from slide.tasks import parse_task_specs
from slide.tasks.user_reward import load_reward


def check_inputs(data_specs: list[str | None], model_init: str | None, reward: str | None = None,
                 sft: bool = False) -> None:
    load_reward(reward)  # data.reward imports and names a function
    specs = [task for spec in data_specs if spec is not None for task, _ in parse_task_specs(spec)]  # file/row/item
    if model_init is not None:
        p = Path(model_init)
        if not p.is_dir():
            raise UserError(f"model.init {model_init!r}: no such checkpoint folder")
        if not (p / "config.json").is_file():
            raise UserError(f"model.init {model_init!r}: not a Hugging Face checkpoint (no config.json)")
        _check_tokenizer(p, model_init, specs, sft)


def _check_tokenizer(folder: Path, init: str, tasks: list, sft: bool) -> None:
    """The checkpoint's tokenizer loads, fits the embeddings (config.json's vocab_size), has a stop token and a
    chat template that renders a prompt (and, for SFT, an assistant turn whose span can be found), and is GLM's
    character format if any task runs multi-turn episodes."""
    from slide.agent.families import AGENT_FAMILIES
    from slide.model.load import check_vocab
    from slide.model.chat import template_example
    from slide.model.tokenizer import chat_prompt, glm_chat, require_glm_chat, stop_token_ids, tokenizer_for

    tok = tokenizer_for(init)
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"model.init {init!r}: config.json is not valid JSON ({e.msg})") from None
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if isinstance(rows, int):
        check_vocab(tok, rows, f"model.init {init!r}")
    stop_token_ids(tok)
    agentic = sorted({t.name for t in tasks if t.name in AGENT_FAMILIES})
    if agentic:
        require_glm_chat(tok, f"the agentic tasks {', '.join(agentic)}")
    if getattr(tok, "chat_template", None) is None:
        raise UserError(f"model.init {init!r}: its tokenizer has no chat template (tokenizer_config.json "
                        f"'chat_template' or chat_template.jinja); SLIDE renders every prompt with it")
    messages = [{"role": "user", "content": "What is 1+1?"}]
    for thinking in (True, False):
        chat_prompt(tok, messages, thinking=thinking)  # a template error becomes one `error:` line
        if sft and not glm_chat(tok):
            template_example(tok, messages, "1+1=2", "2", thinking)
