"""The async trainer's finished groups on disk, so that a killed run loses none of them.

    store = GroupStore(run_dir.path / "groups")
    store.put(step, groups)           # as a worker's groups arrive, before anything else sees them
    store.consumed(group_ids)         # trained, or dropped (stale, no reward signal)
    state["consumed"] = store.since   # in the checkpoint ...
    store.checkpointed()              # ... and once it is written, their files go
    restored = store.restore(state.get("consumed", []))   # on resume: [(step delivered, group)], by group id

A group is written (one file, renamed into place) the moment it arrives, and deleted only once a checkpoint
covers its consumption. So after a kill -9 the folder holds exactly the groups that no surviving checkpoint has
trained or dropped: the ones waiting in the buffer at the checkpoint and every one delivered after it, including
those trained in updates the kill lost. The driver trains them first on resume, within max_staleness, or counts
them as dropped. A kill between a checkpoint and the deletion leaves files the checkpoint lists as consumed:
they are deleted on resume, never trained twice.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


class GroupStore:
    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.since: list[int] = []  # group ids consumed since the last checkpoint (their files still here)

    def _file(self, group_id: int) -> Path:
        return self.folder / f"{group_id:09d}.pt"

    def put(self, step: int, groups: list[list]) -> None:
        for g in groups:
            path = self._file(g[0].group)
            tmp = path.with_suffix(".tmp")
            torch.save({"step": step, "samples": g}, tmp)
            os.replace(tmp, path)

    def consumed(self, group_ids: list[int]) -> None:
        self.since += group_ids

    def checkpointed(self) -> None:
        """A checkpoint that records `since` as consumed is on disk: their files are no longer needed."""
        for gid in self.since:
            self._file(gid).unlink(missing_ok=True)
        self.since = []

    def restore(self, consumed: list[int]) -> list[tuple[int, list]]:
        """The groups no checkpoint has consumed, (step delivered, samples), in group order; deletes the files
        of `consumed` (the checkpoint's list) and any torn write."""
        self.since = list(consumed)
        self.checkpointed()
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink()
        out = []
        for path in sorted(self.folder.glob("*.pt")):
            saved = torch.load(path, weights_only=False)  # the run's own pickled Samples
            out.append((saved["step"], saved["samples"]))
        return out
