"""python -m facemask space: the demo page as a Hugging Face Space that loads the model by its Hub id.

The Space holds app.py and README.md (from facemask/templates/space/), this package (the page is
facemask/publish/demo.py, the code `python -m facemask demo` runs) with its face detector's weights,
and the project's requirements.txt, so it runs the versions the page was tested with. Those pins are
package data (facemask/requirements.txt; the checkout's requirements.txt links to it): an installed
package has them too, and the versions installed here would not do (a local build such as
torch 2.13.0+cpu is not on PyPI for the Space to install). They are written to a local folder
first, then pushed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import jinja2
from huggingface_hub import CommitOperationAdd, HfApi

from facemask import PACKAGE, REQUIREMENTS, TEMPLATES
from facemask.detection.detectors import WEIGHTS_DIR
from facemask.publish.naming import hub_model_id, model_name
from facemask.publish.hub import PushError, delete_stale
from facemask.run_folder import CONFIG, read_run

SPACE_TEMPLATES = TEMPLATES / "space"


def _pinned(requirements: str, package: str) -> str:
    for line in requirements.splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise PushError(f"requirements.txt pins no {package}: the Space's sdk_version comes from that pin")


def space_model_id(run_dir: str | Path, model_id: Optional[str] = None) -> str:
    """The Hub id the Space loads: `model_id`, else the run's hub.model_id."""
    model_id = hub_model_id(read_run(run_dir), model_id)
    if not model_id:
        raise PushError(f"{run_dir} names no Hub model (hub.model_id): pass --model-id, after pushing the run with "
                        f"python -m facemask push {run_dir} --model-id USER/NAME")
    return model_id


def space_files(run_dir: str | Path, model_id: str, revision: Optional[str] = None) -> Dict[str, bytes]:
    """Path in the Space -> content, for the Hub model `model_id` trained by the run in `run_dir`."""
    run = read_run(run_dir)
    requirements = REQUIREMENTS.read_text(encoding="utf-8")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(SPACE_TEMPLATES), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    values = {
        "title": model_name(run, model_id), "model_id": model_id, "model_id_literal": repr(model_id),
        "revision_literal": repr(revision), "gradio_version": _pinned(requirements, "gradio"),
        "license": (run.experiment.get("card") or {}).get("license", "apache-2.0"),
        "has_operating_points": bool(run.operating_points),
    }
    files = {name[: -len(".j2")]: env.get_template(name).render(**values).encode()
             for name in ("app.py.j2", "README.md.j2")}
    files["requirements.txt"] = requirements.encode()
    # The code the page runs: the package's modules, not the templates it fills in elsewhere.
    shipped = sorted(p for p in PACKAGE.rglob("*.py") if TEMPLATES not in p.parents) + sorted(p for p in WEIGHTS_DIR.iterdir() if p.is_file())
    files.update({f"facemask/{path.relative_to(PACKAGE).as_posix()}": path.read_bytes() for path in shipped})
    return files


def write_space(files: Dict[str, bytes], folder: str | Path) -> Path:
    folder = Path(folder)
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def check_space_model(model_id: str, revision: Optional[str] = None, token: Optional[str] = None) -> None:
    """The model the Space loads must be on the Hub already: otherwise the Space would be created
    and then fail at start-up, where only its logs say why. Checked before anything is written."""
    try:
        model_there = HfApi(token=token).file_exists(model_id, CONFIG.name, revision=revision)
    except Exception as err:  # network, auth: nothing was pushed yet
        raise PushError(f"could not check the model {model_id} on the Hub: {err}") from None
    if not model_there:
        at = f" at revision {revision}" if revision else ""
        raise PushError(f"the Hub has no model {model_id}{at} (no {CONFIG.name}) for the Space to load, or this token "
                        f"cannot read it: push the run first with python -m facemask push RUN_DIR --model-id {model_id}"
                        " (--no-push writes the Space's files without pushing them)")


def push_space(files: Dict[str, bytes], space_id: str, folder: Path, model_id: str, revision: Optional[str] = None,
               private: bool = True, token: Optional[str] = None) -> str:
    """Create the Space (gradio SDK) if needed and commit `files`; returns the commit URL. `folder`,
    where they were written, is named in the error. check_space_model has found `model_id` on the Hub."""
    api = HfApi(token=token)
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in files.items()]
        # A module this package no longer has would otherwise stay importable in the Space.
        operations += delete_stale(api, space_id, "space", None, files, ["facemask/*.py", "facemask/*/*.py"])
        commit = api.create_commit(space_id, operations=operations, repo_type="space",
                                   commit_message="Face-mask classifier demo (python -m facemask space)")
    except Exception as err:  # network, auth, quota: the written folder stays as it is
        raise PushError(f"push to the Space {space_id} failed: {err}\nThe Space's files are in {folder}; retry with "
                        f"python -m facemask space RUN_DIR --space-id {space_id}") from None
    return commit.commit_url
