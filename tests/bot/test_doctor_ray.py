"""`python -m bot doctor --ray` (bot/doctor_ray.py) with a real local Ray instance on the CPU, and the refusal of nodes
that hold different weights. Skipped only when Ray is not installed (`pip install -e '.[ray]'`; CI installs it)."""
from __future__ import annotations

import argparse

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from bot.doctor import doctor_command  # noqa: E402
from engine.ray_pool import NodeModel, mismatch  # noqa: E402

TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.delenv("FLUXBOT_CONFIG", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
def test_doctor_ray_joins_a_local_instance_and_names_the_model_every_node_reads(tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "config.toml"
    config.write_text(f'[discord]\ntoken = "{TOKEN}"\n[engine]\nmodel = "tiny-random"\nbackend = "ray"\n'
                      f'models_dir = "{tiny_model_dir.parent}"\n[ray]\nlocal_gpus = 1\n'
                      f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "fluxbot.db"}"\n')
    rc = doctor_command(argparse.Namespace(config=str(config), quick=True, ray=True))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "1 GPU, 1 worker(s)" in out  # the local instance's one node, advertising one logical GPU
    assert "1 worker(s) on 1 node(s) of a local instance, all with tiny-random@" in out
    assert TOKEN not in out


def test_nodes_without_the_model_or_with_other_weights_are_named():
    same = [NodeModel("a" * 16, "10.0.0.2", "flux@111111111111"), NodeModel("b" * 16, "10.0.0.3", "flux@111111111111")]
    assert mismatch(same) is None
    other = same + [NodeModel("c" * 16, "10.0.0.4", "flux@222222222222")]
    assert mismatch(other) == ("the nodes hold different weights: flux@111111111111 on 10.0.0.2/aaaaaaaa, "
                               "10.0.0.3/bbbbbbbb; flux@222222222222 on 10.0.0.4/cccccccc")
    missing = same + [NodeModel("d" * 16, "10.0.0.5", error="ModelNotFoundError: no such file")]
    assert mismatch(missing) == "10.0.0.5/dddddddd: ModelNotFoundError: no such file"
