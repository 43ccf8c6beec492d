"""The API keys in force: ``KILN_API_KEYS`` plus ``KILN_API_KEYS_FILE``, the file
re-read when it changes, so that adding or revoking a key needs no restart.

A request looks its key up here; at most once a second (``check_every_s``) that
lookup first looks at the file's modification time, size and inode (a mounted
Kubernetes Secret is swapped by a rename, an editor may write in place) and, when
one changed, reads the file again. A file that no longer parses or cannot be read
keeps the keys in force and logs why, once per change: a typo never opens the API
and never locks everyone out.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from config.settings import Settings, SettingsError

log = logging.getLogger("kiln.auth")
Stamp = tuple[int, int, int] | None
Key = TypeVar("Key")


class KeyRing(Generic[Key]):
    """``load(settings)`` gives {sha256 hex: key} (``app.auth.load_keys``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        load: Callable[[Settings], dict[str, Key]],
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._load = load
        self._path = Path(settings.api_keys_file).expanduser() if settings.api_keys_file else None
        self._check_every_s = check_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._keys = load(settings)  # at start a bad entry stops the process
        self._checked = clock()
        self.reloads = 0

    def _file_stamp(self) -> Stamp:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> dict[str, Key]:
        """{sha256 hex: ApiKey}, re-read first when the file changed."""
        if self._path is not None and self._clock() - self._checked >= self._check_every_s:
            with self._lock:
                if self._clock() - self._checked >= self._check_every_s:
                    self._checked = self._clock()
                    self._maybe_reload()
        return self._keys

    def _maybe_reload(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = self._load(self._settings)
        except SettingsError as exc:
            log.error("API keys file not reloaded, the keys in force stay: %s", exc)
            return
        self._keys = keys
        self.reloads += 1
        log.info("API keys file reloaded: %d key(s) in force", len(keys))

    def __len__(self) -> int:
        return len(self.current())
