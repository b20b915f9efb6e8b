"""The one line vae-train and vae-export print where the train extra is not installed."""

from __future__ import annotations

OWN_PACKAGES = {"training", "export", "service"}


def missing_train_extra(err: ModuleNotFoundError) -> str | None:
    """What to install when err is a package of the train extra; None for our own modules."""
    package = (err.name or "").split(".")[0]
    if not package or package in OWN_PACKAGES:
        return None
    return (f"this needs {package}, which this install lacks: it comes with the train extra, "
            "pip install 'vae-serve[train]'")
