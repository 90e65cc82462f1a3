"""Ray settings: the `[ray]` section of the config file (used when `[engine] backend = "ray"`), as a typed dataclass.

No Ray import here: the config is read (and `config.example.toml` rendered) on machines without Ray.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.settings import setting

DEFAULT_NAMESPACE = "fluxbot"


@dataclass(frozen=True)
class RaySettings:
    address: str = setting("", "The Ray cluster the GPU workers run on. Empty: start a local Ray instance inside the "
                           "bot's process (one machine, no `ray start` needed). Else the head's address as `ray "
                           "start --head` printed it ('10.0.0.1:6379'), 'auto' (the cluster this host joined), or "
                           "'ray://10.0.0.1:10001' (Ray Client). Whoever reaches Ray's ports can run code on its hosts: "
                           "keep them on a private network and use Ray's token authentication (docs/scale-out.md).")
    namespace: str = setting(DEFAULT_NAMESPACE, "The Ray namespace of the bot's actors (two bots on one cluster use "
                             "two namespaces).")
    resources: dict = setting({"GPU": 1}, "The Ray resources one worker (one engine actor) needs, e.g. {GPU = 1}, or "
                              "{GPU = 1, flux = 1} to use only the nodes started with `ray start --resources="
                              "'{\"flux\": 8}'`. Each node gets as many workers as its resources hold.")
    local_gpus: int = setting(-1, "With `address` empty: the GPUs the local Ray instance advertises (-1: the ones Ray "
                              "finds). On a machine without a GPU, 1 runs one worker on the CPU (tiny-random), to try "
                              "the Ray path on a laptop.", min=-1)
    poll_s: float = setting(2.0, "How often the bot reads the cluster's membership: GPUs that joined get workers, "
                            "those of nodes that left are dropped.", min=0.1, max=600)

    def worker_count(self, node_resources: dict[str, float]) -> int:
        """How many workers a node with these (total) resources holds: the least, over the resources one worker
        needs, of how many times the node has it. 0 for a node lacking one of them (the head without GPUs)."""
        needs = {k: float(v) for k, v in self.resources.items() if float(v) > 0}
        if not needs:
            return 0
        return min(int(node_resources.get(k, 0.0) // v) for k, v in needs.items())
