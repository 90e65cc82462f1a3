"""Model weights: which files the engine needs, where they come from, and proof that they arrived intact.

Three things live here, in the order a download runs them:

1. The plan: `plan_download(what)` names, for `flux-dev`, `majicflus` or `base`, each repository to read,
   the allow patterns that pick exactly the files the engine loads (`select_files`), and the local folder
   under `[engine] models_dir` that receives them.
2. The sources: Hugging Face (`huggingface_hub.snapshot_download`, resumable by itself; the FLUX.1-dev
   repository is gated, see `GATED_HELP`) and ModelScope's HTTP file API (`download_resumable`: HTTP Range
   requests appended to a `.part` file, so an interrupted download continues where it stopped). A file list
   comes from the network, so every path in it goes through `local_path` before anything is written: no
   absolute path, `..`, backslash, and the resolved path stays inside its folder.
3. The manifest: `<models_dir>/<name>/fluxbot-manifest.json` holds the size and SHA-256 of every file
   written, computed at download time (and compared with the SHA-256 the source publishes, when it does).
   `verify_manifest(folder)` checks the files against it again, e.g. at start-up or from `doctor`.

This module never imports discord or the database.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

log = logging.getLogger(__name__)

SOURCES = ("huggingface", "modelscope")
WHAT = ("flux-dev", "majicflus", "base")

FLUX_DEV_REPO = "black-forest-labs/FLUX.1-dev"
FLUX_DEV_FOLDER = "FLUX.1-dev"
MAJICFLUS_REPO = "MAILAND/majicflus_v1"
MAJICFLUS_FILE = "majicflus_v134.safetensors"
MAJICFLUS_FOLDER = "majicflus_v1"

MANIFEST_NAME = "fluxbot-manifest.json"
MANIFEST_FORMAT = 1
MODELSCOPE_ENDPOINT = "https://modelscope.cn"
MODELSCOPE_REVISION = "master"
USER_AGENT = "fluxbot-download/0.1"

# What a diffusers FluxPipeline needs besides the DiT weights: pipeline index, scheduler, both text
# encoders and tokenizers, the VAE, and the transformer's config (single-file DiTs are loaded with
# `config=<this folder>, subfolder="transformer"`). The repository's root `flux1-dev.safetensors` (23 GB),
# `ae.safetensors` and the sample images are not needed.
BASE_PATTERNS = (
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "text_encoder_2/*",
    "tokenizer/*",
    "tokenizer_2/*",
    "vae/*",
    "transformer/config.json",
)
TRANSFORMER_PATTERNS = ("transformer/*",)

GATED_STEPS = (
    "black-forest-labs/FLUX.1-dev is a gated repository:",
    "1) sign in at https://huggingface.co, open https://huggingface.co/black-forest-labs/FLUX.1-dev and accept "
    "the licence (FLUX.1 [dev] Non-Commercial License);",
    "2) create a token with 'read' access at https://huggingface.co/settings/tokens;",
    "3) run the download again with the token in the environment: HF_TOKEN=hf_xxx python -m bot download ... "
    "(or run `hf auth login` once).",
    "Or use --source modelscope, which also hosts FLUX.1-dev under the same name (same licence).",
)
GATED_HELP = " ".join(GATED_STEPS)


class DownloadError(Exception):
    """A download or a check failed; the message says what to do about it."""


# ---------------------------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository, as its source lists it. `sha256` is None where the source publishes none."""
    path: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Part:
    """Files of one repository that go into one folder under models_dir."""
    label: str
    repo_id: str
    source: str
    folder: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class DownloadPlan:
    """What `python -m bot download <what>` fetches, and the config values that use it afterwards.

    `model` and `base_model` are relative to models_dir ("" = leave that key as it is)."""
    what: str
    parts: tuple[Part, ...]
    model: str
    base_model: str

    def config_values(self, models_dir: str | os.PathLike) -> dict[str, str]:
        """The `[engine]` keys to put in the config file, with paths under `models_dir`."""
        base = Path(models_dir)
        out = {}
        if self.model:
            out["model"] = (base / self.model).as_posix()
        if self.base_model:
            out["base_model"] = (base / self.base_model).as_posix()
        return out


def plan_download(what: str, *, source: str | None = None, repo: str | None = None) -> DownloadPlan:
    """The parts to fetch for `what` (flux-dev, majicflus, base).

    `source` applies to every part; None = Hugging Face for FLUX.1-dev and ModelScope for majicflus_v1 (where
    it is published). `repo` replaces the majicflus_v1 repository id (e.g. a Hugging Face mirror)."""
    # 1. Check the request.
    if what not in WHAT:
        raise DownloadError(f"unknown model {what!r}: choose one of {', '.join(WHAT)}")
    if source is not None and source not in SOURCES:
        raise DownloadError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")
    flux_source = source or "huggingface"

    # 2. The FLUX.1-dev folder: always the base files, plus the diffusers transformer for flux-dev.
    if what == "flux-dev":
        flux = Part("FLUX.1-dev (DiT, text encoders, tokenizers, VAE, configs)", FLUX_DEV_REPO, flux_source,
                    FLUX_DEV_FOLDER, BASE_PATTERNS + TRANSFORMER_PATTERNS)
        return DownloadPlan(what, (flux,), model=FLUX_DEV_FOLDER, base_model=FLUX_DEV_FOLDER)
    base = Part("FLUX.1-dev base (text encoders, tokenizers, VAE, configs)", FLUX_DEV_REPO, flux_source,
                FLUX_DEV_FOLDER, BASE_PATTERNS)
    if what == "base":
        return DownloadPlan(what, (base,), model="", base_model=FLUX_DEV_FOLDER)

    # 3. majicflus_v1: one single-file DiT in BFL key layout, plus the FLUX.1-dev base.
    majic_source = source or "modelscope"
    if majic_source == "huggingface" and not repo:
        raise DownloadError("majicflus_v1 is published on ModelScope (MAILAND/majicflus_v1). To fetch it from "
                            "Hugging Face, name a mirror that holds majicflus_v134.safetensors with --repo OWNER/NAME, "
                            "or use --source modelscope.")
    dit = Part("majicflus_v1 DiT", repo or MAJICFLUS_REPO, majic_source, MAJICFLUS_FOLDER, (MAJICFLUS_FILE,))
    return DownloadPlan(what, (dit, base), model=f"{MAJICFLUS_FOLDER}/{MAJICFLUS_FILE}",
                        base_model=FLUX_DEV_FOLDER)


def select_files(files: Iterable[RemoteFile], patterns: Sequence[str]) -> list[RemoteFile]:
    """The listed files that match at least one allow pattern (fnmatch, case-sensitive, `*` crosses `/`,
    as huggingface_hub matches them). Every pattern must match something: a pattern that matches nothing
    means the repository's layout is not the one fluxbot knows, and a partial download would not load."""
    files = list(files)
    chosen = [f for f in files if any(fnmatch.fnmatchcase(f.path, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(f.path, p) for f in files)]
    if unmatched:
        raise DownloadError(f"the repository has no file matching {', '.join(unmatched)}: its layout changed or "
                            "it is not the expected model; nothing was downloaded")
    return sorted(chosen, key=lambda f: f.path)


# ---------------------------------------------------------------------------------------------- file paths

def unsafe_path_reason(path: str) -> str | None:
    """Why a repository file path cannot be written under a local folder, or None if it can.

    A file list comes from the network (ModelScope, a mirror, a custom endpoint): a path like
    `vae/../../../x`, `/etc/x`, `C:\\x` or `vae\\..\\x` would write outside models_dir. Allowed: relative,
    `/`-separated names without `..`, `.` or empty segments, backslashes, NUL or a drive."""
    if not path or "\0" in path:
        return "it is empty or holds a NUL character"
    if "\\" in path:
        return "it holds a backslash"
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).drive:
        return "it is absolute"
    if any(seg in ("", ".", "..") for seg in path.split("/")):
        return "it has an empty, '.' or '..' segment"
    return None


def local_path(folder: str | os.PathLike, path: str) -> Path:
    """`folder / path` for a repository file path, checked: the path must be safe (`unsafe_path_reason`) and
    the resolved result (symlinks followed) must stay inside the resolved folder. DownloadError otherwise."""
    folder = Path(folder)
    reason = unsafe_path_reason(path)
    if reason is None:
        target = folder / path
        if not target.resolve().is_relative_to(folder.resolve()):
            reason = "it leads outside the folder (through a symbolic link)"
        else:
            return target
    raise DownloadError(f"refused the file {path!r}: {reason}, so it could be written outside {folder}; "
                        "nothing was downloaded. The source's file list is wrong or hostile: check the source "
                        "(--source, MODELSCOPE_ENDPOINT, HF_ENDPOINT)")


# ---------------------------------------------------------------------------------------------- sources

def list_remote_files(part: Part, *, token: str | None = None,
                      endpoint: str | None = None) -> tuple[str, list[RemoteFile]]:
    """(revision, files) of the part's repository: a commit hash on Hugging Face, a branch on ModelScope."""
    if part.source == "huggingface":
        return _hf_list(part.repo_id, token=token, endpoint=endpoint)
    return MODELSCOPE_REVISION, modelscope_list(part.repo_id, endpoint=endpoint or MODELSCOPE_ENDPOINT)


def _hf_list(repo_id: str, *, token: str | None, endpoint: str | None) -> tuple[str, list[RemoteFile]]:
    from huggingface_hub import HfApi  # lazy: huggingface_hub is slow to import
    from huggingface_hub.hf_api import RepoFile  # lazy: huggingface_hub is slow to import

    api = HfApi(token=token, endpoint=endpoint)
    with _hf_errors(repo_id, token):
        revision = api.model_info(repo_id).sha
        tree = api.list_repo_tree(repo_id, recursive=True, revision=revision)
        files = [RemoteFile(item.path, item.size, item.lfs.sha256 if item.lfs else None)
                 for item in tree if isinstance(item, RepoFile)]  # folders are listed too
    return revision, files


def modelscope_list(repo_id: str, *, endpoint: str = MODELSCOPE_ENDPOINT,
                    revision: str = MODELSCOPE_REVISION) -> list[RemoteFile]:
    """Files of a ModelScope model repository, from `GET /api/v1/models/<id>/repo/files?Recursive=true`
    (JSON `{"Code": 200, "Data": {"Files": [{"Path", "Size", "Sha256", "Type": "blob"|"tree"}, ...]}}`)."""
    query = urllib.parse.urlencode({"Revision": revision, "Recursive": "true"})
    url = f"{endpoint.rstrip('/')}/api/v1/models/{repo_id}/repo/files?{query}"
    try:
        with urllib.request.urlopen(_request(url), timeout=60) as resp:
            body = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"ModelScope answered {e.code} for the file list of {repo_id}: "
                            f"{'the repository does not exist' if e.code == 404 else 'try again later'}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"cannot read the file list of {repo_id} from {endpoint}: {e}") from None
    entries = (body.get("Data") or {}).get("Files") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise DownloadError(f"ModelScope returned no file list for {repo_id}: {str(body)[:200]}")
    return [RemoteFile(e.get("Path") or e["Name"], e.get("Size"), (e.get("Sha256") or None))
            for e in entries if e.get("Type", "blob") == "blob"]


def modelscope_file_url(repo_id: str, path: str, *, endpoint: str = MODELSCOPE_ENDPOINT,
                        revision: str = MODELSCOPE_REVISION) -> str:
    """ModelScope's HTTP file API: `GET /api/v1/models/<id>/repo?Revision=<rev>&FilePath=<path>` (Range works)."""
    query = urllib.parse.urlencode({"Revision": revision, "FilePath": path})
    return f"{endpoint.rstrip('/')}/api/v1/models/{repo_id}/repo?{query}"


def download_resumable(url: str, dest: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
                       progress: bool = True, retries: int = 5, backoff_s: float = 2.0, timeout: float = 60.0,
                       chunk_bytes: int = 1 << 20) -> str:
    """Download `url` to `dest` through `dest.part`, continuing a previous partial download with an HTTP
    Range request. Returns the SHA-256 of the file; raises DownloadError if it differs from `sha256`."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)

    # 0. A file already downloaded whole is kept; a wrong one is fetched again.
    if dest.is_file() and (size is None or dest.stat().st_size == size):
        digest = sha256_file(dest, progress=progress)
        if sha256 is None or digest == sha256.lower():
            log.info("%s is already complete", dest)
            return digest
        log.warning("%s differs from the published SHA-256: downloading it again", dest)

    # 1. Fetch until the .part file is complete, resuming after every dropped connection.
    failures = 0
    while True:
        before = _size(part)
        try:
            if _fetch_into(url, part, size=size, progress=progress, timeout=timeout, chunk_bytes=chunk_bytes):
                break
            raise ConnectionError("the connection closed before the end of the file")
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code < 500:
                raise DownloadError(f"{url} answered {e.code} {e.reason}: "
                                    f"{'the file does not exist' if e.code == 404 else 'access refused'}") from None
            failures = 1 if _size(part) > before else failures + 1  # progress made: a fresh set of tries
            if failures > retries:
                raise DownloadError(f"download of {dest.name} failed {failures} times ({e}); run the same command "
                                    f"again to continue from {_size(part)} bytes") from None
            log.warning("download of %s interrupted (%s); resuming in %.0f s (try %d of %d)",
                        dest.name, e, backoff_s * failures, failures, retries)
            time.sleep(backoff_s * failures)

    # 2. Check the whole file before it takes its real name.
    digest = sha256_file(part, progress=progress)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise DownloadError(f"{dest.name} arrived corrupted: SHA-256 {digest} differs from the published "
                            f"{sha256.lower()}; the partial file was deleted, run the download again")
    os.replace(part, dest)
    return digest


def _fetch_into(url: str, part: Path, *, size: int | None, progress: bool, timeout: float,
                chunk_bytes: int) -> bool:
    """One request appending to `part`; True once the file is complete (or complete without known size)."""
    have = _size(part)
    if size is not None and have > size:  # a .part longer than the file is not ours to continue
        part.unlink()
        have = 0
    if size is not None and have == size:
        return True
    req = _request(url)
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and size is None:  # asked past the end: the .part is already whole
            return True
        if e.code == 416:
            part.unlink(missing_ok=True)
            raise ConnectionError("the server refused the resume offset; starting again") from None
        raise
    with resp:
        mode = "ab"
        if have and resp.status != 206:  # the server ignored Range and sends the whole file
            log.info("%s: the server does not resume; downloading from the start", part.name)
            have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = size if size is not None else (have + int(length) if length else None)
        from tqdm.auto import tqdm  # lazy: only a download or a checksum shows a progress bar
        with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                                          desc=part.name[:-5], disable=not progress, leave=False) as bar:
            while block := resp.read(chunk_bytes):
                fh.write(block)
                bar.update(len(block))
    got = _size(part)
    return got == total if total is not None else True


def _request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": USER_AGENT})


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class _hf_errors:
    """Turns huggingface_hub's errors into DownloadErrors that say what to do (licence, token, network)."""

    def __init__(self, repo_id: str, token: str | None):
        self.repo_id, self.token = repo_id, token

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None:
            return False
        from huggingface_hub.errors import (  # lazy: huggingface_hub takes ~1 s to import
            GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError)
        if isinstance(err, GatedRepoError) or (self.repo_id == FLUX_DEV_REPO and isinstance(
                err, (RepositoryNotFoundError, HfHubHTTPError)) and _status(err) in (401, 403)):
            have = "a token was given but it has no access yet" if self.token else "no HF_TOKEN was given"
            raise DownloadError(f"access to {self.repo_id} was refused ({have}). {GATED_HELP}") from None
        if isinstance(err, RepositoryNotFoundError):
            raise DownloadError(f"Hugging Face has no repository {self.repo_id} (or it is private and the token "
                                "cannot read it)") from None
        if isinstance(err, LocalEntryNotFoundError) or isinstance(err, OSError) and not isinstance(
                err, HfHubHTTPError):
            raise DownloadError(f"cannot reach Hugging Face for {self.repo_id}: {err}. Check the network; "
                                "HF_ENDPOINT selects a mirror") from None
        if isinstance(err, HfHubHTTPError):
            raise DownloadError(f"Hugging Face refused the request for {self.repo_id}: {str(err)[:300]}") from None
        if isinstance(err, Exception):  # the HTTP client's own errors (connect, timeout, TLS)
            raise DownloadError(f"cannot reach Hugging Face for {self.repo_id} ({type(err).__name__}: {err}). Check "
                                "the network; HF_ENDPOINT selects a mirror, --source modelscope another "
                                "source") from None
        return False


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


# ---------------------------------------------------------------------------------------------- download

@dataclass(frozen=True)
class PartResult:
    part: Part
    folder: Path
    files: tuple[str, ...]
    bytes: int


def download(plan: DownloadPlan, models_dir: str | os.PathLike, *, token: str | None = None,
             hf_endpoint: str | None = None, modelscope_endpoint: str = MODELSCOPE_ENDPOINT,
             progress: bool = True) -> list[PartResult]:
    """Fetch every part of `plan` into `models_dir` and write each folder's manifest."""
    # 1. What each repository holds and the files the engine needs of it; every path is checked (it must stay
    #    inside its folder) before anything is written.
    listings = []
    for part in plan.parts:
        folder = Path(models_dir) / part.folder
        log.info("listing %s from %s (%s)", part.label, part.source, part.repo_id)
        revision, listed = list_remote_files(part, token=token,
                                             endpoint=hf_endpoint if part.source == "huggingface"
                                             else modelscope_endpoint)
        wanted = select_files(listed, part.patterns)
        for f in wanted:
            local_path(folder, f.path)
        listings.append((part, folder, revision, wanted))
    results = []
    for part, folder, revision, wanted in listings:
        total = sum(f.size or 0 for f in wanted)
        log.info("fetching %s: %d files, %.2f GB, into %s", part.label, len(wanted), total / 1e9, folder)
        # 2. Fetch them (each source resumes an interrupted download).
        digests: dict[str, str] = {}
        if part.source == "huggingface":
            _hf_fetch(part, revision, folder, token=token, endpoint=hf_endpoint, progress=progress)
        else:
            for f in wanted:
                url = modelscope_file_url(part.repo_id, f.path, endpoint=modelscope_endpoint, revision=revision)
                digests[f.path] = download_resumable(url, local_path(folder, f.path), size=f.size,
                                                     sha256=f.sha256, progress=progress)
        # 3. Hash what is on disk, compare with what the source publishes, record it.
        write_manifest(folder, wanted, source=part.source, repo_id=part.repo_id, revision=revision,
                       known_digests=digests, progress=progress)
        results.append(PartResult(part, folder, tuple(f.path for f in wanted), total))
    return results


def _hf_fetch(part: Part, revision: str, folder: Path, *, token: str | None, endpoint: str | None,
              progress: bool) -> None:
    from huggingface_hub import snapshot_download  # lazy: huggingface_hub is slow to import
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars  # lazy: slow to import

    if not progress:
        disable_progress_bars()
    try:
        with _hf_errors(part.repo_id, token):
            snapshot_download(part.repo_id, revision=revision, local_dir=folder, allow_patterns=list(part.patterns),
                              token=token, endpoint=endpoint, max_workers=4)
    finally:
        if not progress:
            enable_progress_bars()


# ---------------------------------------------------------------------------------------------- manifest

@dataclass(frozen=True)
class VerifyReport:
    """The result of checking a folder against its manifest. `ok` is False if anything is missing or wrong."""
    folder: Path
    manifest_found: bool
    checked: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()
    hashed: bool = True
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.manifest_found and not self.missing and not self.corrupt and not self.problems

    def summary(self) -> str:
        """One line for a log or the doctor."""
        if not self.manifest_found:
            why = self.problems[0] if self.problems else "not downloaded by fluxbot"
            return f"{self.folder}: no usable {MANIFEST_NAME} ({why}); run `python -m bot download` to fetch " \
                   "and record the files"
        if self.ok:
            how = "SHA-256 verified" if self.hashed else "present with the recorded sizes (not re-hashed)"
            return f"{self.folder}: {len(self.checked)} files {how}"
        parts = []
        if self.missing:
            parts.append(f"missing: {', '.join(self.missing)}")
        if self.corrupt:
            parts.append(f"corrupt (size or SHA-256 differs): {', '.join(self.corrupt)}")
        parts.extend(self.problems)
        return f"{self.folder}: {'; '.join(parts)}; run `python -m bot download` again to replace them"


def sha256_file(path: str | os.PathLike, *, progress: bool = False, chunk_bytes: int = 8 << 20) -> str:
    """SHA-256 of a file, read in chunks (a progress bar for big files when `progress`)."""
    from tqdm.auto import tqdm  # lazy: only a download or a checksum shows a progress bar

    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                                      desc=f"sha256 {path.name}", disable=not progress or size < (256 << 20)) as bar:
        while block := fh.read(chunk_bytes):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def read_manifest(folder: str | os.PathLike) -> dict:
    """The parsed manifest of `folder`; DownloadError if it is missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DownloadError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise DownloadError(f"{path} cannot be read ({e}); run `python -m bot download` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise DownloadError(f"{path} is not a fluxbot manifest; run `python -m bot download` again")
    return data


def write_manifest(folder: str | os.PathLike, files: Iterable[RemoteFile | str], *, source: str = "local",
                   repo_id: str = "", revision: str = "", known_digests: dict[str, str] | None = None,
                   progress: bool = False) -> dict:
    """Hash `files` (paths relative to `folder`) and merge them into the folder's manifest (written
    atomically). A published SHA-256 that differs from the file on disk is an error: nothing is recorded."""
    folder = Path(folder)
    known_digests = known_digests or {}
    # 1. Start from the existing manifest: `base` then `flux-dev` add to the same FLUX.1-dev folder.
    try:
        manifest = read_manifest(folder)
    except DownloadError:
        manifest = {"format": MANIFEST_FORMAT, "files": {}, "sources": []}
    # 2. Hash every file and compare with the source's published SHA-256.
    entries, bad = {}, []
    for item in files:
        remote = item if isinstance(item, RemoteFile) else RemoteFile(item)
        path = local_path(folder, remote.path)
        if not path.is_file():
            raise DownloadError(f"{path} should have been downloaded but is not there; run the download again")
        digest = known_digests.get(remote.path) or sha256_file(path, progress=progress)
        if remote.sha256 and digest != remote.sha256.lower():
            bad.append(remote.path)
        entries[remote.path] = {"size": path.stat().st_size, "sha256": digest}
    if bad:
        raise DownloadError(f"in {folder}: {', '.join(bad)} differ from the SHA-256 the source publishes; delete "
                            "them and run the download again")
    # 3. Record them with where they came from.
    manifest["files"].update(entries)
    manifest["format"] = MANIFEST_FORMAT
    manifest["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    origin = {"source": source, "repo": repo_id, "revision": revision}
    manifest["sources"] = [s for s in manifest.get("sources", []) if s != origin] + [origin]
    tmp = folder / (MANIFEST_NAME + ".tmp")
    folder.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_NAME)
    log.info("manifest %s: %d files recorded", folder / MANIFEST_NAME, len(entries))
    return manifest


def verify_manifest(folder: str | os.PathLike, *, full: bool = True, only: Iterable[str] | None = None,
                    patterns: Sequence[str] | None = None) -> VerifyReport:
    """Check the files recorded in `folder`'s manifest: present, same size, and (when `full`) same SHA-256.

    `only` restricts the check to some recorded paths (e.g. one single-file DiT); `patterns` (a plan's allow
    patterns) restricts it to matching paths and requires each pattern to match a recorded file, so that
    a folder holding only the base files does not pass for flux-dev. Never raises for a bad folder: the
    report says what is wrong."""
    folder = Path(folder)
    # 1. The manifest itself.
    try:
        manifest = read_manifest(folder)
    except DownloadError as e:
        return VerifyReport(folder, manifest_found=False, hashed=full, problems=(str(e),))
    recorded: dict = manifest["files"]
    names = sorted(recorded) if only is None else sorted(only)
    problems = []
    if patterns is not None:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        problems += [f"nothing recorded for {p} (not downloaded yet)" for p in patterns
                     if not any(fnmatch.fnmatchcase(n, p) for n in recorded)]
    # 2. Every recorded file.
    missing, corrupt = [], []
    for name in names:
        entry = recorded.get(name)
        path = folder / name
        if unsafe_path_reason(name) is not None:
            problems.append(f"{name!r} is not a path inside the folder (the manifest was altered)")
        elif entry is None:
            problems.append(f"{name} is not in the manifest")
        elif not path.is_file():
            missing.append(name)
        elif path.stat().st_size != entry.get("size"):
            corrupt.append(name)
        elif full and sha256_file(path, progress=True) != entry.get("sha256"):
            corrupt.append(name)
    report = VerifyReport(folder, True, tuple(names), tuple(missing), tuple(corrupt), full, tuple(problems))
    log.debug("%s", report.summary())  # the caller shows or raises it: it knows how bad it is
    return report


def manifest_folder(model_path: str | os.PathLike) -> tuple[Path, list[str] | None]:
    """(folder holding the manifest, paths to check) for an `[engine] model` / `base_model` value: a folder
    is checked whole, a single file only as itself inside its folder."""
    path = Path(model_path)
    if path.is_file() or path.suffix in (".safetensors", ".sft"):
        return path.parent, [path.name]
    return path, None


def check_model_files(paths: Iterable[str | os.PathLike | None], *, full: bool = False) -> list[VerifyReport]:
    """Start-up check of the resolved `[engine] model` and `base_model` paths (None entries are skipped):
    one report per path. `full=False` checks presence and sizes only (milliseconds); `full=True` re-hashes.
    A folder without a manifest gives a report with `manifest_found=False` (files not fetched by fluxbot:
    the caller decides whether that is fine); missing or corrupt files give `ok=False` with a summary."""
    reports = []
    for path in paths:
        if path is None:
            continue
        folder, only = manifest_folder(path)
        reports.append(verify_manifest(folder, full=full, only=only))
    return reports

