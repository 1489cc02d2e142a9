"""The upload side of the Hub round trip, against a local Hub stand-in (tests/hub_standin.py) on 127.0.0.1:
`hf-rnn-attention push` creates the repository and commits our folder (card included), a fresh process without
the package then loads it by repo id, and `--create-pr` commits to a pull request's ref, never to main.

huggingface_hub reads HF_ENDPOINT when it is imported, and the test process has imported it already: every client
therefore runs in a fresh process whose environment points it at the stand-in (and at nothing else)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from hub_standin import HubStandin
from test_hub import FRESH_PROCESS, RESULTS, saved_model  # noqa: F401  (fixture)
from test_pipeline import TEXTS, model_and_tokenizer, reference  # noqa: F401  (fixture)

REPO_ID = "someone/rnn-demo"
TOKEN = "hf_fakeTokenForTheLocalHubStandin"
REPO_FILES = {
    "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "generation_config.json", "modeling_rnn_attention.py", "configuration_rnn_attention.py",
    "pipeline_rnn_attention.py",
}  # fmt: skip
USAGE = f'pipeline("translation", model="{REPO_ID}", trust_remote_code=True)'

PUSH = textwrap.dedent(
    """
    import sys
    from hf_rnn_attention.cli import main
    main(sys.argv[1:])
    """
)

CLIENT_ERRORS = textwrap.dedent(
    """
    import json, sys
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    expected = {"repo": RepositoryNotFoundError, "revision": RevisionNotFoundError, "entry": EntryNotFoundError}
    calls = {
        "unknown repo (model_info)": ("repo", lambda: HfApi().model_info("someone/unknown")),
        "unknown repo (download)": ("repo", lambda: hf_hub_download("someone/unknown", "config.json")),
        "private repo, no token": ("repo", lambda: hf_hub_download("someone/secret", "config.json", token=False)),
        "unknown revision": ("revision", lambda: hf_hub_download("someone/known", "config.json", revision="v9")),
        "unknown file": ("entry", lambda: hf_hub_download("someone/known", "absent.json")),
    }
    results = {}
    for name, (kind, call) in calls.items():
        try:
            call()
            results[name] = "no error"
        except Exception as error:  # remote errors only: a LocalEntryNotFoundError means the server was not reached
            remote = isinstance(error, expected[kind]) and not isinstance(error, LocalEntryNotFoundError)
            results[name] = "ok" if remote else f"{type(error).__name__}: {error}"
    with open(hf_hub_download("someone/secret", "config.json")) as handle:  # HF_TOKEN opens the private repo
        results["private repo, token"] = handle.read()
    print(json.dumps(results))
    """
)


@pytest.fixture
def hub():
    server = HubStandin(token=TOKEN, user="someone").start()
    yield server
    server.stop()


def run_client(hub, script, args, tmp_path, hf_home, blocked_package=False):
    """Run `script` in a fresh Python process that sees only the stand-in: HF_ENDPOINT (set before
    huggingface_hub is imported), its token, an empty HF_HOME, no offline switches, no proxy for 127.0.0.1."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    env.pop("TRANSFORMERS_OFFLINE", None)
    env.update(
        HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
    )  # fmt: skip
    if blocked_package:
        env["PYTHONPATH"] = ""
    path = tmp_path / f"client_{len(list(tmp_path.glob('client_*.py')))}.py"
    path.write_text(script)
    result = subprocess.run([sys.executable, str(path), *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert hub.unknown == [] and hub.errors == [], (hub.unknown, hub.errors)
    return result


def push(hub, saved_model, tmp_path, *options):  # noqa: F811
    folder = tmp_path / "hub_upload"
    result = run_client(hub, PUSH, ["push", saved_model, REPO_ID, "--folder", folder, *options], tmp_path,
                        tmp_path / "hf_home_push")  # fmt: skip
    assert f"uploaded {folder} to {REPO_ID}" in result.stdout, result.stdout
    return folder


def test_push_creates_the_private_repo_and_commits_the_folder_with_our_card(hub, saved_model, tmp_path):  # noqa: F811
    folder = push(hub, saved_model, tmp_path, "--private", "--language", "de", "en")
    assert [(c["repo_id"], c["private"]) for c in hub.repo_creations] == [(REPO_ID, True)]
    assert hub.repos[REPO_ID].private
    (commit,) = hub.commits
    assert commit["repo_id"] == REPO_ID and commit["ref"] == "main" and commit["pull_request"] is None
    assert commit["summary"] == "Upload RNN attention model"
    assert REPO_FILES <= set(commit["files"]), REPO_FILES - set(commit["files"])
    # exactly the folder push built, byte for byte, and nothing else
    assert commit["files"] == {path.name: path.read_bytes() for path in folder.iterdir()}
    card = commit["files"]["README.md"].decode()
    assert USAGE in card  # our card, not the generic one `model.push_to_hub` would write
    assert "pipeline_tag: translation" in card and "bleu (beam5)" in card and "- de" in card
    assert set(hub.files(REPO_ID)) == set(commit["files"]) | {".gitattributes"}
    paths = {(r.method, r.path) for r in hub.requests}
    assert ("POST", "/api/repos/create") in paths and ("POST", f"/api/models/{REPO_ID}/commit/main") in paths


def test_pushed_repo_loads_by_repo_id_in_a_fresh_process_without_the_package(
    hub,
    model_and_tokenizer,  # noqa: F811
    saved_model,  # noqa: F811
    tmp_path,
):
    model, tokenizer = model_and_tokenizer
    push(hub, saved_model, tmp_path, "--private")
    hf_home = tmp_path / "hf_home_load"  # empty: everything comes from the stand-in
    result = run_client(hub, FRESH_PROCESS, [REPO_ID, json.dumps(TEXTS)], tmp_path, hf_home, blocked_package=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]  # only our JSON line
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    outputs = json.loads(lines[-1])
    expected = reference(model, tokenizer, TEXTS, num_beams=3)
    assert outputs["direct"] == expected and outputs["pipeline"] == expected
    downloaded = {r.path.rsplit("/", 1)[1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_rnn_attention.py",
            "pipeline_rnn_attention.py"} <= downloaded, downloaded  # fmt: skip
    snapshots = hf_home / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots"
    assert [path.name for path in snapshots.iterdir()] == [hub.head(REPO_ID)]


def test_create_pr_commits_to_a_pull_request_ref_and_leaves_main_alone(hub, saved_model, tmp_path):  # noqa: F811
    push(hub, saved_model, tmp_path, "--create-pr")
    assert [(c["repo_id"], c["private"]) for c in hub.repo_creations] == [(REPO_ID, False)]
    (commit,) = hub.commits
    assert commit["ref"] == "refs/pr/1" and commit["pull_request"] == 1
    assert set(hub.files(REPO_ID)) == {".gitattributes"}  # main: still the initial commit
    assert REPO_FILES <= set(hub.files(REPO_ID, "refs/pr/1"))
    assert USAGE in hub.files(REPO_ID, "refs/pr/1")["README.md"].decode()
    (discussion,) = hub.repos[REPO_ID].discussions
    assert discussion["isPullRequest"] and discussion["status"] == "open"


def test_the_standin_answers_the_errors_huggingface_hub_expects(hub, tmp_path):
    hub.add_repo("someone/known")
    hub.add_repo("someone/secret", private=True)
    hub.add_commit("someone/secret", {"config.json": b'{"secret": true}'})
    result = run_client(hub, CLIENT_ERRORS, [], tmp_path, tmp_path / "hf_home")
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    assert outputs.pop("private repo, token") == '{"secret": true}'
    assert outputs == dict.fromkeys(outputs, "ok") and len(outputs) == 5, outputs
    statuses = {}
    for request in hub.requests:
        statuses.setdefault((request.method, request.path), []).append(request.status)
    assert statuses[("GET", "/api/models/someone/unknown")] == [404]
    assert statuses[("HEAD", "/someone/secret/resolve/main/config.json")] == [401, 200]  # without, with the token
    assert statuses[("HEAD", "/someone/known/resolve/main/absent.json")] == [404]
