"""Pushing a finished run to the Hugging Face Hub: the model and what describes it, nothing else."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from facemask.config.schema import WorkFailed
from facemask.publish.public import local_folders, public_text
from facemask.run_folder import CONFIG, PUSH_PATTERNS, read_run


class PushError(WorkFailed):
    """A push that could not be done; the message says what to do."""


def retry_command(run_dir: str | Path, model_id: str, revision: Optional[str] = None, private: bool = True) -> str:
    command = f"python -m facemask push {run_dir} --model-id {model_id}"
    return command + (f" --revision {revision}" if revision else "") + ("" if private else " --public")


def check_write_access(asked_by: str, token: Optional[str] = None) -> str:
    """The account a push would use; raises PushError when there is no token or it cannot write.
    `asked_by` names what the user ran that pushes (`hub.push=true`, `python -m facemask space`),
    so the message points at their own command."""
    try:
        info = HfApi().whoami(token=token)
    except LocalTokenNotFoundError:
        raise PushError(f"{asked_by} pushes to the Hub, but no Hugging Face token was found: run `hf auth login` "
                        "or set HF_TOKEN to a token with write access") from None
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise PushError(f"{asked_by} pushes to the Hub, but the Hugging Face token was rejected (401): log in "
                            "again with `hf auth login` or set HF_TOKEN to a valid token with write access") from None
        raise PushError(f"{asked_by} pushes to the Hub, but the Hugging Face token could not be checked: {err}") \
            from None
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PushError(f"{asked_by} pushes to the Hub, but the Hugging Face token is read-only: create a token with "
                        "write access (https://huggingface.co/settings/tokens) and log in with it")
    return info.get("name", "?")


# The files a push publishes are those run_folder.OUTPUTS marks `pushed`: the model and what
# describes it. Checkpoints, optimizer and scheduler state, RNG state and training_args.bin (which
# can hold a hub_token) never leave. A push also owns those names on the Hub: when it no longer
# has one (a re-export dropped the int8 graph, a retrained model has fewer shards, a split was not
# evaluated again), the earlier copy would describe other weights, so the push's commit deletes it
# (the Hub's history keeps it). Files of other names, a user's own notes or images, are never touched.


def stale_paths(remote: Iterable[str], pushed: Iterable[str], owned: Iterable[str]) -> List[str]:
    """The remote files matching `owned` (glob patterns; `*` stays within a folder) that the push lacks."""
    pushed, owned = set(pushed), list(owned)
    return sorted(path for path in remote if path not in pushed and _owned(path, owned))


def _owned(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) and path.count("/") == pattern.count("/") for pattern in patterns)


def delete_stale(api: HfApi, repo_id: str, repo_type: str, revision: Optional[str], pushed: Iterable[str],
                 owned: Iterable[str]) -> List[CommitOperationDelete]:
    """Delete operations for stale_paths() of what the repository holds now; they are printed."""
    remote = api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)
    stale = stale_paths(remote, pushed, owned)
    if stale:
        print(f"{repo_id}: removing {len(stale)} file(s) of an earlier push that this one no longer has "
              f"(the Hub's history keeps them): {', '.join(stale)}")
    return [CommitOperationDelete(path_in_repo=path) for path in stale]


def files_to_push(run_dir: str | Path) -> List[Path]:
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.rglob("*")
                  if p.is_file() and _owned(p.relative_to(run_dir).as_posix(), PUSH_PATTERNS))


# Files that may name local folders (data, run folder): uploaded as public_text, never as they are.
TEXT_SUFFIXES = (".json", ".yaml", ".md", ".csv", ".jsonl")


def _published(path: Path, folders: Dict[str, str]) -> Any:
    """What a push uploads for `path`: text without local paths or tokens, other files as they are."""
    if path.suffix in TEXT_SUFFIXES:
        return public_text(path.read_text(encoding="utf-8"), folders).encode("utf-8")
    return str(path)


def push_run(run_dir: str | Path, model_id: str, private: bool = True, revision: Optional[str] = None,
             token: Optional[str] = None) -> str:
    """Create the repository if needed and commit the run's model files; returns the commit URL."""
    run_dir = Path(run_dir)
    files = files_to_push(run_dir)
    if not any(p.name == CONFIG.name for p in files):
        raise PushError(f"{run_dir} holds no config.json: is it a finished run's output folder?")
    api = HfApi(token=token)
    run = read_run(run_dir)
    folders = local_folders(run)
    what = "pretrained encoder (masked image modelling)" if run.pretraining else "face-mask classifier"
    try:
        api.create_repo(model_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(model_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=p.relative_to(run_dir).as_posix(),
                                         path_or_fileobj=_published(p, folders)) for p in files]
        operations += delete_stale(api, model_id, "model", revision, [op.path_in_repo for op in operations],
                                   PUSH_PATTERNS)
        commit = api.create_commit(model_id, operations=operations, revision=revision,
                                   commit_message=f"Upload {what} from {run_dir.name}")
    except Exception as err:  # network, auth, quota: the local run stays as it is either way
        raise PushError(f"push to {model_id} failed: {err}\nEvery local file is intact in {run_dir}; retry with:\n"
                        f"  {retry_command(run_dir, model_id, revision, private)}") from None
    return commit.commit_url
