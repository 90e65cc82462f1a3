"""PNG files that carry their own recipe: an A1111-style `parameters` text chunk and a `fluxbot` JSON chunk.

`parameters` is what A1111/Forge/ComfyUI readers and civitai show ("<prompt>\\nSteps: 20, Sampler: …");
`fluxbot` holds the same values as JSON so that `read_png_params` gives them back exactly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.lora_files import prompt_tags
from engine.spec import Result

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

SAMPLER = "Euler (flow match)"
PARAMETERS_KEY = "parameters"
FLUXBOT_KEY = "fluxbot"
# The temporary file a PNG is written to before it is renamed into place: `.<final name>.<pid>.tmp`, beside it.
TEMP_NAME = re.compile(r"\.(?P<final>.+)\.\d+\.tmp")


def temp_path(path: Path) -> Path:
    """Where `save_png` writes `path` first (a crash mid-write leaves this file behind)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def image_params(result: Result, index: int) -> dict[str, Any]:
    """The recipe of image `index` of `result`: everything needed to make the same pixels again."""
    spec = result.spec
    variation_seed = None
    if spec.variation_seed is not None and spec.variation_strength > 0:
        variation_seed = spec.variation_seed + index
    return {
        "prompt": spec.prompt,
        "seed": result.seeds[index],
        "steps": spec.steps,
        "width": spec.width,
        "height": spec.height,
        "guidance": spec.guidance,
        "sampler": SAMPLER,
        "variation_seed": variation_seed,
        "variation_strength": spec.variation_strength if variation_seed is not None else 0.0,
        "model_id": result.model_id,
        "precision": result.precision,
        "profile": result.profile,
        "loras": [{"name": u.name, "strength": u.strength, "sha256": u.sha256, "short_hash": u.short_hash}
                  for u in spec.loras],
        "denoise": spec.denoise if spec.image is not None else None,
        "image_sha256": spec.image_sha256 if spec.image is not None else None,
        "upscale_parent": spec.upscale_parent,
        "recipe": result.recipe,   # engine/recipe.py: storage, compute, compile, library versions, device
    }


def format_parameters(params: dict[str, Any]) -> str:
    """The A1111 `parameters` text: the prompt, a newline, then "Key: value" pairs."""
    name, _, digest = str(params.get("model_id", "")).partition("@")
    pairs = [("Steps", params["steps"]), ("Sampler", params.get("sampler", SAMPLER)), ("CFG scale", 1),
             ("Distilled CFG Scale", params["guidance"]), ("Seed", params["seed"]),
             ("Size", f"{params['width']}x{params['height']}")]
    if digest:
        pairs.append(("Model hash", digest))
    if name:
        pairs.append(("Model", name))
    if params.get("variation_seed") is not None:
        pairs += [("Variation seed", params["variation_seed"]),
                  ("Variation seed strength", params["variation_strength"])]
    if params.get("denoise") is not None:
        pairs.append(("Denoising strength", params["denoise"]))
        if params.get("image_sha256"):
            pairs.append(("Init image hash", params["image_sha256"]))
    if params.get("upscale_parent"):
        pairs.append(("Upscale parent", _quoted(str(params["upscale_parent"]))))
    # 2. LoRAs as A1111 writes them: <lora:name:strength> in the prompt, and their short hashes.
    loras = params.get("loras") or []
    prompt = params["prompt"]
    if loras:
        prompt = f"{prompt} {prompt_tags([(lora['name'], lora['strength']) for lora in loras])}"
        hashes = [f"{_alias(lora['name'])}: {lora['short_hash']}" for lora in loras if lora.get("short_hash")]
        if hashes:
            pairs.append(("Lora hashes", _quoted(", ".join(hashes))))
    return prompt + "\n" + ", ".join(f"{k}: {v}" for k, v in pairs)


def _alias(name: str) -> str:
    """A LoRA's name as A1111 writes it in `Lora hashes` (its colons and commas left out)."""
    return name.replace(":", "").replace(",", "")


def _quoted(value: str) -> str:
    """A1111 quotes a value holding a comma, colon or newline (json.dumps, as its infotext does)."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def save_png(image: "Image", path: str | os.PathLike, params: dict[str, Any]) -> str:
    """Write `image` to `path` (atomically) with both metadata chunks; returns the file's sha256 hex."""
    from PIL.PngImagePlugin import PngInfo  # lazy: PIL only where a PNG is read or written

    # 1. The two chunks (iTXt when the prompt is not Latin-1, which tEXt cannot hold).
    info = PngInfo()
    text = format_parameters(params)
    info.add_text(PARAMETERS_KEY, text, zip=False)
    info.add_text(FLUXBOT_KEY, json.dumps(params, ensure_ascii=False, sort_keys=True), zip=False)
    # 2. A temp file beside the target, renamed into place, so that readers never see half a PNG.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    log.debug("saved %s (%s)", path, digest[:12])
    return digest


def read_png_params(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe saved in a fluxbot PNG; for other A1111-style PNGs only {'parameters': text}."""
    from PIL import Image  # lazy: PIL only where a PNG is read or written

    with Image.open(path) as im:
        chunks = dict(getattr(im, "text", {}) or {})
    if FLUXBOT_KEY in chunks:
        return json.loads(chunks[FLUXBOT_KEY])
    if PARAMETERS_KEY in chunks:
        return {"parameters": chunks[PARAMETERS_KEY]}
    raise ValueError(f"{path} has no generation parameters (no '{FLUXBOT_KEY}' or '{PARAMETERS_KEY}' chunk)")
