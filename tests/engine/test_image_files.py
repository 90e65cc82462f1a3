"""The one naming rule of image files, crash leftovers, and the folder's mark of the highest job id written."""
from __future__ import annotations

import threading

from engine.image_files import IdMark, image_names, is_bot_image, is_leftover


def test_names_carry_the_database_identity_and_the_job_id_only():
    assert image_names(7, 1, "1a2b3c4d") == ["1a2b3c4d-7.png"]
    assert image_names(7, 2, "1a2b3c4d") == ["1a2b3c4d-7_0.png", "1a2b3c4d-7_1.png"]
    assert image_names(7, 1) == ["7.png"]  # a store without identity (tests, the CLI's own folder)
    assert all(is_bot_image(n) for n in ("7.png", "7_1.png", "1a2b3c4d-7.png", "1a2b3c4d-7_3.png"))
    assert not any(is_bot_image(n) for n in ("cat.png", "1A2B3C4D-7.png", "zz-7.png", "7.PNG", "-7.png"))


def test_leftovers_are_the_temporary_files_of_the_bots_images_only():
    assert is_leftover(".7.png.123.tmp") and is_leftover(".1a2b3c4d-7_0.png.9.tmp")
    assert not any(is_leftover(n) for n in (".cat.png.123.tmp", "7.png.tmp", ".7.png.tmp", ".fluxbot-job-ids.json.tmp"))


def test_the_mark_keeps_the_highest_id_per_identity_across_threads(tmp_path):
    mark = IdMark(tmp_path)
    assert mark.highest("1a2b3c4d") == 0
    threads = [threading.Thread(target=mark.note, args=("1a2b3c4d", i)) for i in range(1, 41)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mark.note("1a2b3c4d", 5)  # lower: changes nothing
    mark.note("99999999", 3)
    again = IdMark(tmp_path)  # as the next start-up reads it
    assert (again.highest("1a2b3c4d"), again.highest("99999999"), again.highest("00000000")) == (40, 3, 0)


def test_a_damaged_mark_file_is_read_as_empty(tmp_path, caplog):
    (tmp_path / ".fluxbot-job-ids.json").write_text("{not json")
    assert IdMark(tmp_path).highest("1a2b3c4d") == 0 and "cannot be read" in caplog.text
