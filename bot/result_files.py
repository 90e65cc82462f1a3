"""A finished job's images on disk: one PNG per image, named by `engine.image_files`, with its recipe inside."""
from __future__ import annotations

import logging
from pathlib import Path

from db.records import ImageFile
from engine.image_files import IdMark, image_names
from engine.png import image_params, save_png
from engine.spec import Result

log = logging.getLogger(__name__)


def write_pngs(images_dir: Path, identity: str | None, id_mark: IdMark, job_id: int,
               result: Result) -> list[ImageFile]:
    """Save each image as <images_dir>/<identity>-<job_id>[_<i>].png with its recipe (engine.image_files);
    return paths and SHA-256s, and remember the job id in the folder's mark (`id_mark`)."""
    files = []
    for i, name in enumerate(image_names(job_id, len(result.images), identity)):
        path = images_dir / name
        digest = save_png(result.images[i], path, {**image_params(result, i), "job_id": job_id})
        files.append(ImageFile(path=str(path), sha256=digest))
    if identity:
        try:
            id_mark.note(identity, job_id)
        except OSError as e:  # the images are saved; only the guard against a restored backup is weaker
            log.warning("job %d: cannot update %s (%s)", job_id, id_mark.path, e.strerror or e)
    return files
