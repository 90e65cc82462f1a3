"""Model download without network: file choice, manifest + verification, and the resumable ModelScope
downloader against a fake ModelScope file API on loopback (http.server with Range support)."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine import download as dl
from tests.fakemodelscope import FakeModelScope

# The files of black-forest-labs/FLUX.1-dev (main), as the Hub lists them.
FLUX_DEV_FILES = [
    ".gitattributes", "LICENSE.md", "README.md", "ae.safetensors", "dev_grid.jpg", "flux1-dev.safetensors",
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/model.safetensors", "text_encoder_2/config.json",
    "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
    "text_encoder_2/model.safetensors.index.json", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/spiece.model", "tokenizer_2/tokenizer.json", "tokenizer_2/tokenizer_config.json",
    "transformer/config.json", "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
    "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
    "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
BASE_EXPECTED = {
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/model.safetensors", "text_encoder_2/config.json",
    "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
    "text_encoder_2/model.safetensors.index.json", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/spiece.model", "tokenizer_2/tokenizer.json", "tokenizer_2/tokenizer_config.json",
    "transformer/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
}
MAJIC_FILES = [".gitattributes", "README.md", "configuration.json", "majicflus_v134.safetensors", "sample.png"]


def _listed(paths):
    return [dl.RemoteFile(p) for p in paths]


# ---------------------------------------------------------------------------------------------- choosing files

def test_base_patterns_pick_exactly_the_pipeline_files_without_the_23_gb_single_file():
    plan = dl.plan_download("base")
    (part,) = plan.parts
    chosen = {f.path for f in dl.select_files(_listed(FLUX_DEV_FILES), part.patterns)}
    assert chosen == BASE_EXPECTED
    assert plan.config_values("models") == {"base_model": "models/FLUX.1-dev"}


def test_flux_dev_adds_the_diffusers_transformer_and_nothing_else():
    plan = dl.plan_download("flux-dev")
    (part,) = plan.parts
    chosen = {f.path for f in dl.select_files(_listed(FLUX_DEV_FILES), part.patterns)}
    transformer = {p for p in FLUX_DEV_FILES if p.startswith("transformer/")}
    assert chosen == BASE_EXPECTED | transformer
    assert "flux1-dev.safetensors" not in chosen and "ae.safetensors" not in chosen
    assert plan.config_values("/srv/models") == {"model": "/srv/models/FLUX.1-dev",
                                                 "base_model": "/srv/models/FLUX.1-dev"}


def test_our_selection_matches_what_huggingface_hub_will_fetch_with_the_same_patterns():
    from huggingface_hub.utils import filter_repo_objects

    for what in ("base", "flux-dev"):
        part = dl.plan_download(what).parts[0]
        ours = {f.path for f in dl.select_files(_listed(FLUX_DEV_FILES), part.patterns)}
        hubs = set(filter_repo_objects(FLUX_DEV_FILES, allow_patterns=list(part.patterns)))
        assert ours == hubs


def test_majicflus_takes_one_file_from_modelscope_plus_the_flux_base():
    plan = dl.plan_download("majicflus")
    dit, base = plan.parts
    assert (dit.source, dit.repo_id, base.source) == ("modelscope", "MAILAND/majicflus_v1", "huggingface")
    assert [f.path for f in dl.select_files(_listed(MAJIC_FILES), dit.patterns)] == ["majicflus_v134.safetensors"]
    assert plan.config_values("models") == {"model": "models/majicflus_v1/majicflus_v134.safetensors",
                                            "base_model": "models/FLUX.1-dev"}
    assert all(p.source == "modelscope" for p in dl.plan_download("majicflus", source="modelscope").parts)


def test_majicflus_from_huggingface_needs_a_mirror_repo():
    with pytest.raises(dl.DownloadError, match="--repo"):
        dl.plan_download("majicflus", source="huggingface")
    plan = dl.plan_download("majicflus", source="huggingface", repo="someone/majicflus-mirror")
    assert plan.parts[0].repo_id == "someone/majicflus-mirror"


def test_a_repository_without_an_expected_file_is_refused_before_downloading():
    files = [p for p in FLUX_DEV_FILES if not p.startswith("vae/")]
    with pytest.raises(dl.DownloadError, match=r"vae/\*"):
        dl.select_files(_listed(files), dl.plan_download("base").parts[0].patterns)


# ---------------------------------------------------------------------------------------------- manifest

def _make_folder(root: Path) -> dict[str, bytes]:
    content = {"model_index.json": b'{"_class_name": "FluxPipeline"}', "vae/config.json": b"{}",
               "vae/diffusion_pytorch_model.safetensors": os.urandom(4096)}
    for name, data in content.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return content


def test_manifest_records_sha256_and_verify_passes_on_intact_files(tmp_path):
    content = _make_folder(tmp_path)
    dl.write_manifest(tmp_path, list(content), source="huggingface", repo_id="r", revision="abc")
    manifest = json.loads((tmp_path / dl.MANIFEST_NAME).read_text())
    for name, data in content.items():
        assert manifest["files"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    report = dl.verify_manifest(tmp_path)
    assert report.ok and set(report.checked) == set(content)


def test_a_corrupted_file_of_the_same_size_is_detected(tmp_path):
    content = _make_folder(tmp_path)
    dl.write_manifest(tmp_path, list(content))
    weights = tmp_path / "vae/diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    quick = dl.verify_manifest(tmp_path, full=False)
    assert quick.ok  # sizes alone cannot see it ...
    report = dl.verify_manifest(tmp_path)  # ... the SHA-256 does
    assert not report.ok and report.corrupt == ("vae/diffusion_pytorch_model.safetensors",)
    assert "corrupt" in report.summary() and "download" in report.summary()


def test_a_missing_file_and_a_missing_manifest_are_reported(tmp_path):
    content = _make_folder(tmp_path)
    dl.write_manifest(tmp_path, list(content))
    (tmp_path / "vae/config.json").unlink()
    report = dl.verify_manifest(tmp_path, full=False)
    assert not report.ok and report.missing == ("vae/config.json",)
    empty = dl.verify_manifest(tmp_path / "nothing-here")
    assert not empty.ok and not empty.manifest_found and "python -m bot download" in empty.summary()


def test_a_file_that_differs_from_the_published_hash_is_refused(tmp_path):
    _make_folder(tmp_path)
    remote = dl.RemoteFile("vae/config.json", 2, hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(dl.DownloadError, match="differ from the SHA-256"):
        dl.write_manifest(tmp_path, [remote])
    assert not (tmp_path / dl.MANIFEST_NAME).exists()


def test_manifests_merge_so_base_then_flux_dev_keeps_both(tmp_path):
    content = _make_folder(tmp_path)
    dl.write_manifest(tmp_path, ["model_index.json"], repo_id="a")
    dl.write_manifest(tmp_path, ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"], repo_id="a")
    assert set(json.loads((tmp_path / dl.MANIFEST_NAME).read_text())["files"]) == set(content)


def test_single_file_model_is_checked_in_its_own_folder(tmp_path):
    dit = tmp_path / "majicflus_v1" / "majicflus_v134.safetensors"
    dit.parent.mkdir()
    dit.write_bytes(b"x" * 100)
    dl.write_manifest(dit.parent, [dit.name])
    folder, only = dl.manifest_folder(dit)
    assert (folder, only) == (dit.parent, [dit.name])
    assert dl.verify_manifest(folder, only=only).ok


# ---------------------------------------------------------------------------------------------- ModelScope

@pytest.fixture
def weights():
    return os.urandom(300_000)


def test_modelscope_list_and_url_form(weights):
    with FakeModelScope({"majicflus_v134.safetensors": weights, "README.md": b"hi"}) as ms:
        files = dl.modelscope_list(ms.repo, endpoint=ms.endpoint)
    assert {f.path for f in files} == {"majicflus_v134.safetensors", "README.md"}  # folders left out
    assert dl.modelscope_file_url("MAILAND/majicflus_v1", "a b.safetensors") == (
        "https://modelscope.cn/api/v1/models/MAILAND/majicflus_v1/repo?Revision=master&FilePath=a+b.safetensors")


def test_resumes_a_partial_download_with_a_range_request(tmp_path, weights):
    dest = tmp_path / "majicflus_v134.safetensors"
    (tmp_path / "majicflus_v134.safetensors.part").write_bytes(weights[:123_456])
    with FakeModelScope({dest.name: weights}) as ms:
        url = dl.modelscope_file_url(ms.repo, dest.name, endpoint=ms.endpoint)
        digest = dl.download_resumable(url, dest, size=len(weights), sha256=hashlib.sha256(weights).hexdigest(),
                                       progress=False, backoff_s=0)
    assert ms.ranges == ["bytes=123456-"]
    assert dest.read_bytes() == weights and digest == hashlib.sha256(weights).hexdigest()
    assert not (tmp_path / "majicflus_v134.safetensors.part").exists()


def test_a_complete_file_is_not_fetched_again_but_a_wrong_one_is(tmp_path, weights):
    dest = tmp_path / "w.safetensors"
    good = hashlib.sha256(weights).hexdigest()
    with FakeModelScope({dest.name: weights}) as ms:
        url = dl.modelscope_file_url(ms.repo, dest.name, endpoint=ms.endpoint)
        dl.download_resumable(url, dest, size=len(weights), sha256=good, progress=False)
        dl.download_resumable(url, dest, size=len(weights), sha256=good, progress=False)
        assert len(ms.ranges) == 1
        dest.write_bytes(b"\0" * len(weights))  # same size, wrong content
        dl.download_resumable(url, dest, size=len(weights), sha256=good, progress=False)
        assert len(ms.ranges) == 2 and dest.read_bytes() == weights


def test_a_dropped_connection_is_resumed_where_it_stopped(tmp_path, weights):
    dest = tmp_path / "w.safetensors"
    with FakeModelScope({dest.name: weights}) as ms:
        ms.drop_after = 100_000
        url = dl.modelscope_file_url(ms.repo, dest.name, endpoint=ms.endpoint)
        dl.download_resumable(url, dest, size=len(weights), progress=False, backoff_s=0, chunk_bytes=16384)
    assert ms.ranges == [None, "bytes=100000-"]
    assert dest.read_bytes() == weights


def test_a_corrupted_download_is_deleted_and_reported(tmp_path, weights):
    dest = tmp_path / "w.safetensors"
    with FakeModelScope({dest.name: weights}) as ms:
        url = dl.modelscope_file_url(ms.repo, dest.name, endpoint=ms.endpoint)
        with pytest.raises(dl.DownloadError, match="corrupted"):
            dl.download_resumable(url, dest, size=len(weights), sha256="0" * 64, progress=False, backoff_s=0)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_a_server_that_keeps_failing_gives_up_with_a_resume_hint(tmp_path, weights):
    dest = tmp_path / "w.safetensors"
    with FakeModelScope({dest.name: weights}) as ms:
        ms.status = 503
        url = dl.modelscope_file_url(ms.repo, dest.name, endpoint=ms.endpoint)
        with pytest.raises(dl.DownloadError, match="failed 3 times.*run the same command again"):
            dl.download_resumable(url, dest, size=len(weights), progress=False, retries=2, backoff_s=0)
    assert len(ms.ranges) == 3 and not dest.exists()


def test_a_missing_remote_file_says_so(tmp_path):
    with FakeModelScope({}) as ms:
        url = dl.modelscope_file_url(ms.repo, "nope.safetensors", endpoint=ms.endpoint)
        with pytest.raises(dl.DownloadError, match="404"):
            dl.download_resumable(url, tmp_path / "nope.safetensors", progress=False, backoff_s=0)


def test_majicflus_part_downloads_end_to_end_and_verifies(tmp_path, weights):
    plan = dl.plan_download("majicflus")
    dit_only = dl.DownloadPlan("majicflus", plan.parts[:1], plan.model, plan.base_model)
    with FakeModelScope({"majicflus_v134.safetensors": weights, "README.md": b"readme"}) as ms:
        (result,) = dl.download(dit_only, tmp_path, modelscope_endpoint=ms.endpoint, progress=False)
    assert result.files == ("majicflus_v134.safetensors",)
    assert not (tmp_path / "majicflus_v1" / "README.md").exists()
    folder, only = dl.manifest_folder(tmp_path / plan.model)
    assert dl.verify_manifest(folder, only=only).ok


def test_published_hash_mismatch_fails_the_download(tmp_path, weights):
    plan = dl.plan_download("majicflus")
    dit_only = dl.DownloadPlan("majicflus", plan.parts[:1], plan.model, plan.base_model)
    with FakeModelScope({"majicflus_v134.safetensors": weights}) as ms:
        ms.lie_about_hash = True
        with pytest.raises(dl.DownloadError, match="corrupted"):
            dl.download(dit_only, tmp_path, modelscope_endpoint=ms.endpoint, progress=False)
    assert not (tmp_path / "majicflus_v1" / dl.MANIFEST_NAME).exists()


def test_verify_with_plan_patterns_refuses_a_base_only_folder_for_flux_dev(tmp_path):
    content = _make_folder(tmp_path)
    dl.write_manifest(tmp_path, list(content))
    assert dl.verify_manifest(tmp_path, patterns=("vae/*", "model_index.json")).ok
    report = dl.verify_manifest(tmp_path, patterns=("vae/*", "transformer/*"))
    assert not report.ok and "transformer/*" in report.summary()


def test_a_gated_refusal_from_the_hub_explains_the_licence_and_token_steps(tmp_path):
    """A loopback stand-in for huggingface.co answering like a gated repository without access."""
    class Gated(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b'{"error": "Access to model black-forest-labs/FLUX.1-dev is restricted."}'
            self.send_response(403)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gated)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(dl.DownloadError) as err:
            dl.download(dl.plan_download("base"), tmp_path, token=None, progress=False,
                        hf_endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    text = str(err.value)
    assert "no HF_TOKEN" in text and "accept the licence" in text and "settings/tokens" in text
    assert not (tmp_path / "FLUX.1-dev").exists()


# ---------------------------------------------------------------------------------------------- hostile file lists

@pytest.mark.parametrize("evil", ["vae/../../../x", "vae/..\\..\\..\\x", "vae/\\\\host\\share\\x", "vae//x", "vae/./x"])
def test_a_file_list_naming_a_path_outside_the_folder_is_refused_before_anything_is_written(tmp_path, evil):
    """A ModelScope listing (or a custom endpoint's) whose file matches `vae/*` but leads out of models_dir."""
    files = {"model_index.json": b"{}", "vae/config.json": b"{}", evil: b"owned"}
    plan = dl.plan_download("base", source="modelscope")
    part = dl.Part(plan.parts[0].label, plan.parts[0].repo_id, "modelscope", plan.parts[0].folder,
                   ("model_index.json", "vae/*"))
    models = tmp_path / "deep" / "models"
    with FakeModelScope(files, repo=part.repo_id) as ms:
        with pytest.raises(dl.DownloadError, match="refused the file .*nothing was downloaded"):
            dl.download(dl.DownloadPlan("base", (part,), "", part.folder), models, modelscope_endpoint=ms.endpoint,
                        progress=False)
        assert ms.ranges == []  # not one file was requested
    assert not models.exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("path", ["/etc/passwd", "C:/x", "C:x", "a/../b", "..", "", "a\0b"])
def test_unsafe_paths_are_named_with_the_reason(tmp_path, path):
    assert dl.unsafe_path_reason(path) is not None
    with pytest.raises(dl.DownloadError, match="refused the file"):
        dl.local_path(tmp_path, path)


def test_a_symlink_inside_the_folder_that_leads_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "models" / "FLUX.1-dev"
    folder.mkdir(parents=True)
    (folder / "vae").symlink_to(outside, target_is_directory=True)
    with pytest.raises(dl.DownloadError, match="symbolic link"):
        dl.local_path(folder, "vae/config.json")
    assert dl.local_path(folder, "text_encoder/config.json") == folder / "text_encoder/config.json"


def test_an_altered_manifest_cannot_make_verify_read_outside_the_folder(tmp_path):
    folder = tmp_path / "m"
    content = _make_folder(folder)
    dl.write_manifest(folder, list(content))
    (tmp_path / "secret").write_bytes(b"x")
    manifest = json.loads((folder / dl.MANIFEST_NAME).read_text())
    manifest["files"]["../secret"] = {"size": 1, "sha256": "0" * 64}
    (folder / dl.MANIFEST_NAME).write_text(json.dumps(manifest))
    report = dl.verify_manifest(folder)
    assert not report.ok and "'../secret' is not a path inside the folder" in report.summary()
