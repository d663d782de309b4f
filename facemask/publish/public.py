"""What a published text may say about this machine: no token and no absolute local path.

A run's files name its data by where it lies (`/home/ana/data/masks/with_mask/0001.jpg`), which
is right for the local files and wrong for the card and the Hub: they would publish a user's
name and directory layout. `public_text` names each local folder the run used by its own name
(`masks/with_mask/0001.jpg`), the home folder `~`, and masks tokens. The card and every text file
a push uploads go through it; the run folder's own files keep the full paths.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Dict

from facemask.config.dump import redact
from facemask.run_folder import RunFiles

# Config keys that may hold a local folder or file (a local checkpoint or dataset folder, an exclude list,
# a corrections file).
FOLDER_KEYS = {
    "data": ("train_dir", "validation_dir", "test_dir", "dataset_name", "cache_dir", "preprocess_dir", "exclude",
             "corrections"),
    "model": ("name_or_path", "cache_dir"),
    "training": ("output_dir", "logging_dir"),
}


def local_folders(run: RunFiles) -> Dict[str, str]:
    """{absolute path of a local folder or file the run used: its name}: the folders its config
    names (relative ones resolved from the working directory), the run folder itself, the paths on
    its command line (the config file, `key=/a/path` overrides) and its preprocessing caches."""
    experiment, info = run.experiment, run.run_info
    values = [(experiment.get(section) or {}).get(key) for section, keys in FOLDER_KEYS.items() for key in keys]
    values.append(((experiment.get("recipe") or {}).get("distill") or {}).get("teacher"))
    for word in shlex.split(info.get("command") or ""):
        value = word.split("=", 1)[-1]
        if value.startswith(("/", "~")):
            values.append(value)
    values += [cache.get("path") for cache in info.get("preprocessing") or [] if isinstance(cache, dict)]
    folders: Dict[str, str] = {}
    for value in [*values, str(run.directory)]:
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if not path.is_absolute() and not path.exists():
            continue  # a Hub id such as google/vit-base-patch16-224-in21k, or a folder elsewhere
        for spelled in {str(path), str(path.resolve())}:
            if Path(spelled).is_absolute() and spelled != "/":
                folders[spelled.rstrip("/")] = Path(spelled).name or spelled
    return folders


def public_text(text: str, folders: Dict[str, str]) -> str:
    """`text` with each folder of `folders` named by its name, the home folder as `~`, and tokens masked."""
    start, end = r"(?<![\w.~/-])", r"(?=[/\\\"'`\s.,;:)\]}]|$)"  # a whole path, not the tail of a longer one
    home = str(Path.home()).rstrip("/")
    names = {**folders, **({home: "~"} if home else {})}
    for path in sorted(names, key=len, reverse=True):  # a folder inside another one first
        # JSON files escape non-ASCII names (/srv/jos\u00e9/masks): both spellings are replaced.
        for spelled in dict.fromkeys([path, json.dumps(path)[1:-1]]):
            text = re.sub(start + re.escape(spelled) + end, lambda _: names[path], text)
    return redact(text)
