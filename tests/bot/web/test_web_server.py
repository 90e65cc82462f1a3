"""Serving the console safely: loopback by default, a login required anywhere else (and never logged), a taken port
said in one line, and the login naming whose jobs they are."""
from __future__ import annotations

import logging
import socket

import pytest

from bot.web.jobs import web_user_id
from bot.config import Config, ConfigError, WebSettings, parse_config
from bot.web.exposure import ConsoleExposed, ServeOptions, check_exposure, is_loopback, log_exposure, serve_options
from bot.web.server import _bind
from db import jobs as store_jobs
from tests.support.web_console import RunningConsole, form

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")
from gradio_client.exceptions import AuthenticationError  # noqa: E402

PASSWORD = "pw-7f3a9c"


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                         ("localhost", True), ("0.0.0.0", False), ("192.168.1.20", False),
                                         ("::", False), ("myhost.lan", False)])
def test_only_loopback_addresses_count_as_this_machine(host, local):
    assert is_loopback(host) is local


def test_listening_beyond_loopback_needs_a_login_which_is_never_logged(caplog):
    with pytest.raises(ConsoleExposed, match=r"\[web\] host = '0.0.0.0' lets other machines reach the console: "
                                             r"set \[web\] auth"):
        check_exposure(ServeOptions(host="0.0.0.0", port=6006))
    caplog.set_level(logging.INFO)
    exposed = ServeOptions(host="0.0.0.0", port=6006, auth=("alice", PASSWORD))
    check_exposure(exposed)
    log_exposure(exposed)
    assert "reachable from other machines; a login (user 'alice') protects it" in caplog.text
    assert PASSWORD not in caplog.text and PASSWORD not in repr(ServeOptions(auth=("alice", PASSWORD)))


def test_web_config_keys_the_login_from_the_environment_and_its_checks():
    # 1. the defaults: this machine only, port 6006, no login
    assert serve_options(Config()) == ServeOptions(host="127.0.0.1", port=6006, auth=None)
    # 2. env FLUXBOT_WEB_AUTH gives the login; the config and repr never show the password
    config = parse_config({"web": {"host": "0.0.0.0", "auth": "bob:old"}},
                          env={"FLUXBOT_WEB_AUTH": f"alice:{PASSWORD}"})
    assert serve_options(config).auth == ("alice", PASSWORD) and PASSWORD not in repr(config)
    # 3. an exposed address without a login, or a login without a password, is a config error naming the key
    with pytest.raises(ConsoleExposed):
        serve_options(parse_config({"web": {"host": "0.0.0.0"}}, env={}))
    with pytest.raises(ConfigError, match=r"\[web\] auth must be 'user:password'"):
        WebSettings(auth=parse_config({"web": {"auth": "alice"}}, env={}).web.auth).login()
    with pytest.raises(ConfigError, match=r"\[web\] port = 70000: must be at most 65535"):
        parse_config({"web": {"port": 70000}}, env={})


def test_a_taken_port_is_one_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"the web console cannot listen on 127.0.0.1:{port}: "):
            _bind("127.0.0.1", port)


@pytest.fixture(scope="module")
def console(tmp_path_factory, tiny_model_dir):
    running = RunningConsole(tmp_path_factory.mktemp("web"), tiny_model_dir.parent,
                             options=ServeOptions(port=0, auth=("alice", PASSWORD))).start()
    yield running
    running.stop()


def test_the_login_is_required_and_names_whose_jobs_they_are(console, tmp_path):
    # 1. no login, or a wrong one: nothing but the login page
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        gradio_client.Client(console.url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):  # Gradio answers a wrong password with 400
        gradio_client.Client(console.url, verbose=False, auth=("alice", "wrong"))
    assert httpx.post(f"{console.url}gradio_api/queue/join", json={}).status_code == 401
    # 2. alice's request is alice's job; her history is hers
    alice = gradio_client.Client(console.url, verbose=False, auth=("alice", PASSWORD), download_files=str(tmp_path))
    status, image, job_id, *_ = alice.predict(*form("alice's cat", 3, steps=1), api_name="/generate")
    row = console.call(store_jobs.get_job(console.store, int(job_id)))
    assert row.user_id == web_user_id("alice") != web_user_id("local")
    assert [item["caption"] for item in alice.predict(api_name="/history")] == [f"#{int(job_id)} · seed 3 · "
                                                                                 f"alice's cat"]
