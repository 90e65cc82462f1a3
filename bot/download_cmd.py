"""`python -m bot download [flux-dev|majicflus|base] [--source …] [--repo …] [--verify]`.

Fetches what the engine needs into `[engine] models_dir`, records a SHA-256 manifest per folder, and
prints the `[engine]` lines to put in the config. With `--verify` it downloads nothing and re-hashes every
recorded file instead.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from bot.config import load_config
from engine import download as dl

log = logging.getLogger(__name__)


def download_command(args) -> int:
    """Run the download (or the verification) and return the exit status."""
    # 1. Where models go, from the config (defaults when there is no config file yet).
    cfg = load_config(getattr(args, "config", None))
    models_dir = cfg.engine.models_dir
    try:
        plan = dl.plan_download(args.what, source=args.source, repo=getattr(args, "repo", None))
    except dl.DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.verify:
        return _verify(plan, models_dir)

    # 2. Say what will happen, including the Hugging Face licence step for the gated FLUX.1-dev.
    token = os.environ.get("HF_TOKEN") or None
    _announce(plan, models_dir, token)

    # 3. Download; every error message says what to do.
    try:
        results = dl.download(plan, models_dir, token=token,
                              modelscope_endpoint=os.environ.get("MODELSCOPE_ENDPOINT", dl.MODELSCOPE_ENDPOINT))
    except dl.DownloadError as e:
        print(f"\ndownload failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue where it stopped", file=sys.stderr)
        return 130

    # 4. What was written, and the config lines that use it.
    for r in results:
        print(f"ok  {r.part.label}: {len(r.files)} files, {r.bytes / 1e9:.2f} GB in {r.folder} "
              f"(SHA-256 recorded in {dl.MANIFEST_NAME})")
    print("\nPut these lines in the [engine] section of your config file"
          f"{f' ({cfg.path})' if cfg.path else ' (config.toml)'}:\n")
    print("[engine]")
    for key, value in plan.config_values(_as_in_config(models_dir, cfg.path)).items():
        print(f'{key} = "{value}"')
    if plan.what == "base":
        print('# and set model = "<path to your single-file DiT>" (e.g. a majicflus_v134.safetensors)')
    print("\nThen check the set-up with: python -m bot doctor")
    return 0


def _announce(plan: dl.DownloadPlan, models_dir: str, token: str | None) -> None:
    for part in plan.parts:
        print(f"->  {part.label}: {part.repo_id} from {part.source} into {Path(models_dir) / part.folder}")
    gated = any(p.repo_id == dl.FLUX_DEV_REPO and p.source == "huggingface" for p in plan.parts)
    if gated and not token:
        print("\nnote: no HF_TOKEN in the environment. " + "\n  ".join(dl.GATED_STEPS))
    elif gated:
        print("    (using the Hugging Face token from HF_TOKEN)")
    print("    Downloads resume where they stopped if interrupted; run the same command again.\n")


def _verify(plan: dl.DownloadPlan, models_dir: str) -> int:
    status = 0
    for part in plan.parts:
        folder = Path(models_dir) / part.folder
        report = dl.verify_manifest(folder, full=True, patterns=part.patterns)
        print(("ok    " if report.ok else "FAIL  ") + report.summary())
        status = status or (0 if report.ok else 1)
    return status


def _as_in_config(folder: str, config_path: str) -> str:
    """`folder` as the config file would say it: relative to the file's own folder when inside it (relative
    paths in the config mean beside it), else as it is."""
    if not config_path:
        return folder
    try:
        return Path(folder).relative_to(Path(config_path).resolve().parent).as_posix()
    except ValueError:
        return folder
