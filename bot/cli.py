"""`python -m bot …`: one parser, one module per subcommand (imported only when that subcommand runs)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bot.config import ConfigError
from bot.plan_cmd import add_arguments as plan_arguments
from bot.errors import CannotStart
from engine.settings import PROFILES
from db.errors import StoreError

log = logging.getLogger(__name__)

# subcommand -> "module:function"; each function takes the parsed args and returns an exit status.
HANDLERS = {
    "run": "bot.run_cmd:run_command",
    "web": "bot.web.standalone:web_command",
    "generate": "bot.generate_cmd:generate_command",
    "migrate": "bot.migrate_cmd:migrate_command",
    "download": "bot.download_cmd:download_command",
    "doctor": "bot.doctor:doctor_command",
    "plan": "bot.plan_cmd:plan_command",
}


CONFIG_HELP = "config file (default: $FLUXBOT_CONFIG, else ./config.toml); before or after the command"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bot", description="fluxbot: FLUX.1 image generation for Discord, "
                                "on your own GPU.")
    p.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    # --config is accepted after the subcommand too (`python -m bot run --config x.toml`); SUPPRESS keeps a value
    # given before it when none comes after.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("run", parents=[common], help="start the Discord bot")
    sub.add_parser("web", parents=[common], help="serve the web console alone: the engine, the queue and the database, "
                   "no Discord ([web] host/port, http://127.0.0.1:6006/ by default; docs/web.md)")

    g = sub.add_parser("generate", parents=[common],
                       help="make an image from the terminal with the same engine as the bot")
    g.add_argument("prompt")
    g.add_argument("--seed", type=int, default=-1, help="-1 = random (printed)")
    g.add_argument("--steps", type=int, default=None, help="default: [engine] default_steps")
    g.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 16 (default 1024x1024; with --image, the "
                   "image's own size at about 1 megapixel at most)")
    g.add_argument("--guidance", type=float, default=None, help="default: [engine] default_guidance")
    g.add_argument("--count", type=int, default=1, help="images, seeds seed..seed+count-1")
    g.add_argument("--variation-seed", type=int, default=None)
    g.add_argument("--variation-strength", type=float, default=0.0)
    g.add_argument("--image", default=None, metavar="PATH", help="an image to start from (img2img); stored without "
                   "its metadata beside the images, as the bot stores attachments")
    g.add_argument("--strength", type=float, default=None, help="with --image: how much to change it, 0 (keep) to 1 "
                   "(ignore it); default 0.6")
    g.add_argument("--lora", action="append", default=None, metavar="NAME_OR_PATH[:STRENGTH]",
                   help="a LoRA by name (a file of [engine] loras_dir without .safetensors) or path, strength -2..2 "
                   "(default 1); repeat for several")
    g.add_argument("--model", default=None, help="override [engine] model")
    g.add_argument("--profile", default=None, choices=PROFILES, help="override [engine] profile")
    g.add_argument("-o", "--output", default=None, help="PNG path (default: the images folder); with --count > 1, "
                   "_1, _2 … are added")

    sub.add_parser("migrate", parents=[common], help="create or upgrade the database schema to the newest version")

    d = sub.add_parser("download", parents=[common],
                       help="fetch model weights into [engine] models_dir (needs network)")
    d.add_argument("what", nargs="?", default="flux-dev", choices=["flux-dev", "majicflus", "base"],
                   help="flux-dev: the whole FLUX.1-dev folder; majicflus: majicflus_v1 DiT + FLUX.1-dev base; "
                   "base: only the FLUX.1-dev encoders, tokenizers, VAE and configs")
    d.add_argument("--source", choices=["huggingface", "modelscope"], default=None,
                   help="where to fetch every file from (default: huggingface for FLUX.1-dev, modelscope for "
                   "majicflus_v1; modelscope mirrors FLUX.1-dev without the licence gate)")
    d.add_argument("--repo", default=None, metavar="OWNER/NAME",
                   help="another repository for the majicflus_v1 DiT (e.g. a Hugging Face mirror)")
    d.add_argument("--verify", action="store_true", help="download nothing; check every file against its manifest")

    doc = sub.add_parser("doctor", parents=[common],
                         help="check GPU, RAM, disk, model files and config; non-zero exit if the bot "
                         "could not start")
    doc.add_argument("--quick", action="store_true", help="check model files by size only (no SHA-256 re-hash, "
                     "which takes a minute or two for 30 GB)")
    doc.add_argument("--ray", action="store_true", help="also check the Ray cluster of [ray]: its nodes, the workers "
                     "they hold, and the same model hash on every one (docs/scale-out.md)")

    plan_arguments(sub.add_parser("plan", parents=[common], help="where every weight would live on this machine (or "
                                  "on one you describe) and how fast; works without a GPU or the weights"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, func = HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module), func)
    try:
        return int(handler(args) or 0)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"database error: {e}", file=sys.stderr)
        return 1
    except CannotStart as e:
        print(str(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
