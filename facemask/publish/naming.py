"""What a run is called where it is published: its model name (the card's title, the demo's and
the Space's) and its Hub id."""

from __future__ import annotations

from typing import Optional

from facemask.run_folder import RunFiles


def model_name(run: RunFiles, hub_model_id: Optional[str]) -> str:
    card = run.experiment.get("card") or {}
    return card.get("model_name") or (hub_model_id or "").split("/")[-1] or run.directory.resolve().name


def hub_model_id(run: RunFiles, override: Optional[str] = None) -> Optional[str]:
    return override or (run.experiment.get("hub") or {}).get("model_id")
