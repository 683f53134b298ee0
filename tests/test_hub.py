"""Publishing to the Hub and loading back through timm, against a local stand-in for the Hub (tests/fakehub.py)."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from fakehub import FakeHub, Repo
from rf_bench.cli import main
from rf_bench.hub import HubError, build_repo_folder, fetch_checkpoint, publish, tag_for_run, write_manifest
from rf_bench.results import load_run, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]

# A fresh process loads the tag through timm and reports weights equality and test accuracy as JSON.
LOAD_AND_EVALUATE = """
import json, sys, timm, torch
import rf_bench
from safetensors.torch import load_file
from rf_bench.data import load
from rf_bench.probes.base import evaluate
name, weights = sys.argv[1], sys.argv[2]
model = timm.create_model(name, pretrained=True)
own = load_file(weights)
same = all(torch.equal(v, own[k]) for k, v in model.state_dict().items()) and set(own) == set(model.state_dict())
_, acc = evaluate(model, load("digits", "test"))
print(json.dumps(dict(same=same, acc=acc, listed=timm.list_pretrained("*rfpool*"), tag=model.pretrained_cfg["tag"])))
"""


def _env(tmp_path, hub=None, token=None, offline=False, home="hf"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / home), HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_TELEMETRY="1",
               RF_BENCH_REGISTRY=str(tmp_path / "registry"), OMP_NUM_THREADS="1")
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    if token:
        env["HF_TOKEN"] = token
    return env


def _python(args, env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT)


def _load(name, weights, env):
    proc = _python(["-c", LOAD_AND_EVALUATE, name, str(weights)], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def hub_session(monkeypatch, tmp_path):
    """In this process: huggingface_hub pointed at a FakeHub, an empty cache, no saved login, a temp registry."""
    from huggingface_hub import constants

    with FakeHub({"tok-alice": "alice", "tok-bob": "bob"}) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("RF_BENCH_REGISTRY", str(tmp_path / "registry"))
        yield hub


def _cli_error(capsys, *argv):
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0, err
    return err


@pytest.mark.slow
def test_publish_then_timm_pretrained_round_trip(tiny_runs, tmp_path):
    run = load_run(tiny_runs[1])  # vgg19_rfpool1, seed 1
    tag = tag_for_run(run)
    name = f"{run.model_name}.{tag}"
    weights = run.path / "model.safetensors"
    test_acc = json.loads((run.path / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
    with FakeHub({"tok-alice": "alice"}) as hub:
        proc = _python(["hub_upload.py", str(run.path), "--namespace", "alice", "--staging", str(tmp_path / "stage"),
                        "--no-progress"], _env(tmp_path, hub, token="tok-alice"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "tok-alice" not in proc.stdout + proc.stderr  # the token is never printed

        # the repo: timm's layout, one commit, and the manifest pins that commit and the file's hash
        repo_id = f"alice/{name}"
        (commit, files), = hub.repos[repo_id].commits
        assert sorted(files) == ["README.md", "config.json", "model.safetensors", "run/config.json",
                                 "run/metrics.jsonl"]
        assert files["model.safetensors"] == weights.read_bytes()
        assert json.loads(files["config.json"])["architecture"] == run.model_name
        manifest = json.loads((tmp_path / "registry" / f"{run.model_name}.json").read_text())
        entry = manifest["tags"][tag]
        assert (entry["repo_id"], entry["revision"]) == (repo_id, commit)
        assert entry["sha256"] == sha256_file(weights) and entry["size"] == weights.stat().st_size
        assert entry["metrics"]["test_acc"] == test_acc and entry["model_args"] == {"width_mult": 0.125}

        # a fresh process: timm downloads through its Hub path; same weights, same test accuracy
        loaded = _load(name, weights, _env(tmp_path, hub))
        assert loaded["same"] and loaded["acc"] == pytest.approx(test_acc, abs=1e-12)
        assert name in loaded["listed"] and loaded["tag"] == tag
        downloads = [p for m, p in hub.requests if m == "GET" and p.endswith("/model.safetensors")]
        assert len(downloads) == 1 and commit in downloads[0]  # pinned revision, downloaded once

    # the Hub is gone: offline mode loads from the cache
    loaded = _load(name, weights, _env(tmp_path, offline=True))
    assert loaded["same"] and loaded["acc"] == pytest.approx(test_acc, abs=1e-12)


def test_tampered_download_and_cold_offline_cache_are_refused(tiny_runs, hub_session, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    run = load_run(tiny_runs[0])
    monkeypatch.setenv("HF_TOKEN", "tok-alice")
    (published,) = publish([run.path], "alice", staging=tmp_path / "stage", progress=False)
    name = published.name
    assert main(["pull", name, "--no-progress"]) == 0 and "sha256 verified" in capsys.readouterr().out

    # a corrupted mirror, fetched into a fresh cache: refused before anything loads it
    hub_session.tamper(published.repo_id, "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "fresh-cache"))
    err = _cli_error(capsys, "pull", name, "--no-progress")
    assert "sha256" in err and "the manifest says" in err
    with pytest.raises(HubError, match="the manifest says"):
        fetch_checkpoint(published.entry)

    # offline with an empty cache: say how to fill it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cold-cache"))
    assert "rf-bench pull" in _cli_error(capsys, "pull", name, "--no-progress")
    assert "not published" in _cli_error(capsys, "pull", "vgg19_rfpool1.nowhere_s0")


def test_publish_errors_are_one_line(tiny_runs, hub_session, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    run = str(tiny_runs[0])
    publish_args = ["publish", run, "--namespace", "alice", "--staging", str(tmp_path / "stage"), "--no-progress"]
    err = _cli_error(capsys, *publish_args)
    assert "no Hugging Face token" in err and "HF_TOKEN" in err

    hub_session.repos["alice/vgg19_rfpool1.digits_fast_s0"] = Repo(owner="alice")
    monkeypatch.setenv("HF_TOKEN", "tok-bob")
    err = _cli_error(capsys, *publish_args)
    assert "cannot write" in err and "403" in err and "--namespace" in err and "tok-bob" not in err
    assert not (tmp_path / "registry").exists()  # nothing recorded for a failed upload

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "done").unlink()
    assert "not finished" in _cli_error(capsys, "publish", str(unfinished), "--namespace", "bob", "--no-progress")

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    err = _cli_error(capsys, *publish_args)
    assert "cannot reach the Hub" in err and "HF_HUB_OFFLINE" in err


def _front_matter(text):
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert match, "the model card must start with a YAML block"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_dry_run_folder_card_and_timm_config(tiny_runs, tmp_path):
    from huggingface_hub import ModelCard

    from rf_bench.rf import receptive_field

    run = load_run(tiny_runs[2])  # vgg19_rfpool2, seed 0
    published = build_repo_folder(run, tmp_path / "repo", "alice")
    meta, body = _front_matter((published.folder / "README.md").read_text())
    assert meta["library_name"] == "timm" and "rf-bench" in meta["tags"] and meta["license"] == "apache-2.0"
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0]["type"] == "accuracy"
    assert result["metrics"][0]["value"] == pytest.approx(published.entry["metrics"]["test_acc"])
    assert ModelCard.load(published.folder / "README.md").data.library_name == "timm"
    analytic = receptive_field(run.create_model(), (3, 256, 256)).size
    assert analytic == 178 * 2 + 2 and f"**{analytic} px**" in body and "359 px" in body  # ours and the paper's
    assert f'timm.create_model("{published.name}", pretrained=True)' in body
    assert body.count("```") % 2 == 0  # fenced blocks are closed

    config = json.loads((published.folder / "config.json").read_text())
    assert config["architecture"] == "vgg19_rfpool2" and config["num_classes"] == 10
    assert config["model_args"]["width_mult"] == 0.125
    assert config["pretrained_cfg"]["mean"] == pytest.approx(run.meta["data"]["mean"])
    assert config["pretrained_cfg"]["tag"] == published.tag

    # the folder alone rebuilds the model: timm's own file override path, no manifest involved
    model = timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
                              pretrained_cfg_overlay=dict(file=str(published.folder / "model.safetensors")))
    own = load_file(str(run.path / "model.safetensors"))
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())


def test_pretrained_without_weights_or_unknown_tag_is_refused():
    with pytest.raises(ValueError, match="no default weights; name a published tag"):
        timm.create_model("resnet50_rfpool3", pretrained=True, width_mult=0.125)
    with pytest.raises(ValueError, match="unknown pretrained tag resnet50_rfpool3.cifar10_s9"):
        timm.create_model("resnet50_rfpool3.cifar10_s9", width_mult=0.125)


def test_shipped_registry_holds_only_real_publications():
    """Every shipped manifest names a pinned commit and a sha256 (an empty registry is valid)."""
    for path in sorted((REPO_ROOT / "registry").glob("*.json")):
        manifest = json.loads(path.read_text())
        assert path.stem == manifest["model"] and timm.is_model(manifest["model"])
        for entry in manifest["tags"].values():
            assert re.fullmatch(r"[0-9a-f]{40}", entry["revision"]) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])


@pytest.mark.slow
def test_wheel_ships_the_manifests(tmp_path):
    """Build the wheel from a copy of the repo with one manifest added; the installed files list the tag."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    src = tmp_path / "src"
    for rel in tracked.stdout.split():
        if (REPO_ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, src / rel)
    entry = dict(repo_id="alice/resnet50_rfpool3.cifar10_s0", revision="a" * 40, filename="model.safetensors",
                 sha256="b" * 64, size=1, num_classes=10, input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.25] * 3)
    write_manifest(src / "registry", "resnet50_rfpool3", "cifar10_s0", entry)
    build = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; print(b.build_wheel('dist'))"],
                           cwd=src, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = src / "dist" / build.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        assert "rf_bench/registry/resnet50_rfpool3.json" in zf.namelist()
        assert not any(n.startswith("rf_bench/registry/.") for n in zf.namelist())  # no lock files
        zf.extractall(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if k != "RF_BENCH_REGISTRY"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    code = ("import rf_bench, timm, json; print(json.dumps([rf_bench.__file__, timm.list_pretrained('*rfpool*'), "
            "timm.get_pretrained_cfg('resnet50_rfpool3.cifar10_s0').hf_hub_id]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    file, listed, hub_id = json.loads(proc.stdout)
    assert file.startswith(str(tmp_path / "site")) and "resnet50_rfpool3.cifar10_s0" in listed
    assert hub_id == f"alice/resnet50_rfpool3.cifar10_s0@{'a' * 40}"
