"""The one rule for the bot's image files: their names, the crash leftovers beside them, and the highest job id
ever written into the folder.

Names come from the job id only, never from user input, prefixed with the identity of the database that issued
the id (`<identity>-<job id>.png`, `<identity>-<job id>_<index>.png` for several images), so that a database
that was reset (ids start again at 1 under a new identity) never overwrites the files of the old one. Files
written before identities existed are `<job id>.png` / `<job id>_<index>.png`; both forms are the bot's.

`engine.png.save_png` writes through a temporary file beside the target (`engine.png.temp_path`); a crash in
between leaves it behind: `is_leftover` recognises those of the bot's images, which retention deletes.

Input images (an img2img attachment, an Upscale's source) are stored once per content in `<images dir>/inputs/` as
`<sha256>.png` (`input_path`), shared by every job that names them; retention deletes one once no job needs it.

A database restored from an older backup keeps its identity but forgets the job ids it issued after the backup.
The folder remembers them: `IdMark` keeps, per identity, the highest job id whose images were written here
(`.fluxbot-job-ids.json`), and the bot makes the database skip past it at start-up.

The engine never imports the database: callers pass the identity in.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

from engine.png import TEMP_NAME

log = logging.getLogger(__name__)

IDENTITY = re.compile(r"[0-9a-f]{8}")  # what a database identity looks like (db.instance makes them)
BOT_IMAGE = re.compile(rf"(?:(?P<identity>{IDENTITY.pattern})-)?(?P<job>\d+)(?:_\d+)?\.png")
MARK_FILE = ".fluxbot-job-ids.json"
LEFTOVER_AGE_S = 600.0  # a temporary file this old is no write in progress (a PNG is written in seconds)
INPUTS_DIR = "inputs"   # stored input images, under the images folder
INPUT_IMAGE = re.compile(r"[0-9a-f]{64}\.png")


def image_names(job_id: int, count: int, identity: str | None = None) -> list[str]:
    """PNG file names of a job: from the issuing database's identity and the job id only."""
    stem = f"{identity}-{job_id}" if identity else str(job_id)
    return [f"{stem}.png"] if count == 1 else [f"{stem}_{i}.png" for i in range(count)]


def inputs_dir(images_dir: str | os.PathLike) -> Path:
    return Path(images_dir) / INPUTS_DIR


def input_path(images_dir: str | os.PathLike, sha256: str) -> Path:
    """Where the input image of this SHA-256 (of its clean PNG) is stored."""
    return inputs_dir(images_dir) / f"{sha256}.png"


def is_input_image(name: str) -> bool:
    return INPUT_IMAGE.fullmatch(name) is not None


def is_input_leftover(name: str) -> bool:
    """The temporary file of an input's write that a crash interrupted (`engine.image_input.store_image`)."""
    return name.startswith(".") and name.endswith(".tmp") and is_input_image(name[1:-4])


def is_bot_image(name: str) -> bool:
    return BOT_IMAGE.fullmatch(name) is not None


def is_leftover(name: str) -> bool:
    """A temporary file `save_png` left beside one of the bot's images (the process died mid-write)."""
    match = TEMP_NAME.fullmatch(name)
    return match is not None and is_bot_image(match["final"])


class IdMark:
    """The highest job id per database identity whose images were written into `folder`. Thread-safe (workers
    save images from their own threads); the file is replaced atomically."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / MARK_FILE
        self._lock = threading.Lock()

    def highest(self, identity: str) -> int:
        """The highest job id written under `identity` (0 when none)."""
        return int(self._read().get(identity, 0))

    def note(self, identity: str, job_id: int) -> None:
        """Remember that `job_id`'s images were written (a lower id than the mark changes nothing)."""
        with self._lock:
            marks = self._read()
            if job_id <= int(marks.get(identity, 0)):
                return
            marks[identity] = job_id
            tmp = self.path.with_name(self.path.name + ".tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(marks, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s cannot be read (%s); job ids written before are not known", self.path, e)
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if IDENTITY.fullmatch(str(k)) and isinstance(v, int)}
