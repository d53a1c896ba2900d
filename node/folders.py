"""Watched folders: rescanned on a schedule and on demand.

New files are ingested (copied into the store), unchanged ones are skipped
by size and modification time without being read, a file whose content
changed gives its item the new content in place (same item ID, so its
comments and views stay; the feed publishes the new content hash), and files
that disappeared are recorded as deletions of their items.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from node.service import ContentManager

log = logging.getLogger(__name__)


class WatchedFolders:
    def __init__(self, *, cma: ContentManager, folders: list[str], visibility: str) -> None:
        self._cma = cma
        self.folders = folders
        self.visibility = visibility
        self._lock = asyncio.Lock()

    async def scan(self) -> dict[str, Any]:
        async with self._lock:
            out: dict[str, Any] = {
                "folders": [],
                "added": 0,
                "updated": 0,
                "unchanged": 0,
                "removed": 0,
                "failed": [],
            }
            for folder in self.folders:
                report = await self._cma.ingest_paths([folder], None, self.visibility, source="folder")
                removed = await self._cma.forget_missing_files(folder, source="folder")
                out["folders"].append(folder)
                out["added"] += len(report.added)
                out["updated"] += len(report.updated)
                out["unchanged"] += report.skipped_unchanged
                out["removed"] += len(removed)
                out["failed"] += [{"path": p, "error": e} for p, e in report.failed]
            if self.folders:
                log.info(
                    "scanned %d watched folders: %d added, %d updated, %d unchanged, %d removed, %d failed",
                    len(self.folders),
                    out["added"],
                    out["updated"],
                    out["unchanged"],
                    out["removed"],
                    len(out["failed"]),
                )
            return out
