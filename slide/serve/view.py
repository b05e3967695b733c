"""`slide view RUNS_DIR`: a local web page over run directories: runs side by side (charts of metrics.jsonl) and a
trajectory browser (trajectories.jsonl, filtered by step, reward and status).

    slide view runs --port 8080            # http://127.0.0.1:8080/ ; Ctrl-C stops it

Served by the same FastAPI + uvicorn stack as `slide serve`; the page is one static HTML file with its own canvas
charts (slide/serve/static/view.html): nothing to build, nothing fetched from the internet. A run is any folder
holding a metrics.jsonl (RUNS_DIR itself, or its subfolders, two levels deep: `runs/demo/rl`).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse

from slide.ablate.report import _jsonl as read_jsonl  # a torn last line (a run writing right now) is skipped
from slide.errors import UserError
from slide.serve.protocol import ApiError

PAGE = Path(__file__).resolve().parent / "static" / "view.html"
MAX_ROWS = 200  # trajectories per answer (the page pages through the rest)


def find_runs(root: Path) -> dict[str, Path]:
    """name -> folder of every run under `root` (a folder with metrics.jsonl), `root` itself included."""
    found = [root] if (root / "metrics.jsonl").is_file() else []
    for pattern in ("*/metrics.jsonl", "*/*/metrics.jsonl"):
        found += sorted(p.parent for p in root.glob(pattern))
    return {(str(p.relative_to(root)) if p != root else root.name): p for p in found}


def matches(row: dict, step: int | None, min_reward: float | None, max_reward: float | None,
            status: str | None) -> bool:
    reward = row.get("reward", 0.0)
    return ((step is None or row.get("step") == step) and (min_reward is None or reward >= min_reward)
            and (max_reward is None or reward <= max_reward) and (not status or row.get("status") == status))


def build_view_app(root: Path) -> FastAPI:
    app = FastAPI(title="slide view", docs_url=None, redoc_url=None)

    def run_dir(name: str) -> Path:
        runs = find_runs(root)
        if name not in runs:
            raise ApiError(404, f"no run {name!r} under {root}", "run")
        return runs[name]

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    @app.get("/api/runs")
    async def runs():
        return [{"name": name, "steps": len(read_jsonl(path / "metrics.jsonl"))}
                for name, path in find_runs(root).items()]

    @app.get("/api/metrics")
    async def metrics(run: str):
        return read_jsonl(run_dir(run) / "metrics.jsonl")

    @app.get("/api/trajectories")
    async def trajectories(run: str, step: int | None = None, min_reward: float | None = None,
                           max_reward: float | None = None, status: str | None = None,
                           offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=MAX_ROWS)):
        rows = read_jsonl(run_dir(run) / "trajectories.jsonl")
        kept = [r for r in rows if matches(r, step, min_reward, max_reward, status)]
        return {"total": len(rows), "matched": len(kept), "statuses": sorted({r.get("status", "") for r in rows}),
                "steps": sorted({r.get("step", 0) for r in rows}), "rows": kept[offset:offset + limit]}

    return app


def view(root: str, host: str, port: int) -> None:
    """Serve the viewer over `root` until Ctrl-C."""
    import uvicorn

    from slide.serve.server import listen
    path = Path(root)
    if not path.is_dir():
        raise UserError(f"runs folder {root!r}: no such folder")
    if not find_runs(path):
        raise UserError(f"runs folder {root!r}: no run in it (a run is a folder with metrics.jsonl)")
    sock = listen(host, port)
    print(f"viewing {len(find_runs(path))} runs of {root} at http://{host}:{sock.getsockname()[1]}/ (Ctrl-C stops)",
          flush=True)
    try:
        uvicorn.Server(uvicorn.Config(build_view_app(path), log_level="warning")).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the signal again once it has shut down
        pass
    finally:
        sock.close()
