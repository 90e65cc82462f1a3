"""`[ray] address`: which addresses fluxbot can use. Ray Client ('ray://host:port') cannot carry the engine actors'
streaming calls (each job's progress and its images), so it is refused where the config is read (tests/bot/
test_config.py) and again where the pool joins Ray, before anything connects."""
from __future__ import annotations

import pytest

from engine.ray_settings import RaySettings, address_problem


@pytest.mark.parametrize("address", ["", "auto", "10.0.0.1:6379", "head.internal:6379"])
def test_a_cluster_address_auto_or_empty_is_fine(address):
    assert address_problem(address) is None


@pytest.mark.parametrize("address", ["ray://127.0.0.1:10001", " RAY://head:10001"])
def test_a_ray_client_address_is_refused_naming_what_works(address):
    why = address_problem(address)
    assert why.startswith("is a Ray Client address") and "'10.0.0.1:6379'" in why and "VPN" in why


def test_the_pool_refuses_a_ray_client_address_before_joining_anything():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from engine.errors import EngineError
    from engine.ray_pool import connect

    assert not ray.is_initialized()
    with pytest.raises(EngineError, match=r"\[ray\] address = 'ray://127.0.0.1:10001' is a Ray Client address"):
        connect(RaySettings(address="ray://127.0.0.1:10001"))
    assert not ray.is_initialized()

