"""`slide serve`: an OpenAI-compatible HTTP server over the in-process engine (FastAPI + uvicorn).

protocol.py  request bodies and OpenAI's error shape
text.py      token ids -> streamed text; a chat turn -> reasoning_content, content, tool_calls
backend.py   requests -> rows of the continuous-batching engine, tokens back as they are decoded
app.py       the endpoints: /v1/chat/completions, /v1/completions, /v1/models, /health
server.py    the command: checkpoint, port, uvicorn, Ctrl-C
view.py      `slide view`: runs side by side and a trajectory browser (static/view.html), on the same stack
"""
