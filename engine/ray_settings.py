"""Ray settings: the `[ray]` section of the config file (used when `[engine] backend = "ray"`), as a typed dataclass.

No Ray import here: the config is read (and `config.example.toml` rendered) on machines without Ray.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.settings import setting

DEFAULT_NAMESPACE = "fluxbot"
RAY_CLIENT = "ray://"  # Ray Client's scheme: refused (address_problem)


@dataclass(frozen=True)
class RaySettings:
    address: str = setting("", "The Ray cluster the GPU workers run on. Empty: start a local Ray instance inside the "
                           "bot's process (one machine, no `ray start` needed). Else the head's address as `ray "
                           "start --head` printed it ('10.0.0.1:6379'), or 'auto' (the cluster this host joined); not a Ray "
                           "Client address ('ray://…'), which cannot carry a job's progress. Whoever reaches Ray's ports "
                           "can run code on its hosts: keep them on a private network and use Ray's token "
                           "authentication (docs/scale-out.md).")
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


def address_problem(address: str) -> str | None:
    """Why fluxbot cannot use this `[ray] address`, or None. A Ray Client address ("ray://host:port") cannot: Ray
    Client refuses streaming actor methods (Ray 2.60, ray/util/client/worker.py `call_remote`: 'Streaming actor methods
    (num_returns="streaming") are not currently supported when using Ray Client'), and every job's progress and
    result come back through one (engine/ray_engine.py). Checked when the config is read and again by
    `ray_pool.connect`."""
    if not address.strip().lower().startswith(RAY_CLIENT):
        return None
    return ("is a Ray Client address, which fluxbot cannot use: Ray Client does not carry the streaming calls that "
            "bring each job's progress and images back. Give the head's cluster address instead (as `ray start "
            "--head` printed it, e.g. '10.0.0.1:6379'), and run the bot on a host that reaches every Ray host "
            "directly: on the cluster's private network, or joined to it over a VPN such as WireGuard or Tailscale "
            "(docs/scale-out.md, 'Ray Client')")
