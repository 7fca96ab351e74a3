"""The plugin's settings: keys, defaults and validators. Admins set them with Girder's own
``PUT /system/setting``; a bad value is refused with a 400 saying what is allowed. The values are
read with :func:`current`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from girder.exceptions import ValidationException
from girder.models.folder import Folder
from girder.models.setting import Setting
from girder.settings import SettingDefault
from girder.utility import setting_utilities

from lnassist import constants, dsa

DEFAULT_MODE = "lnassist.default_mode"  # one of lnassist.constants.MODES
THRESHOLDS = "lnassist.thresholds"  # {mode: threshold in [0, 1]} for every mode
ANALYSIS_IMAGE = "lnassist.analysis_image"  # the slicer_cli_web Docker image to analyse with ("": none)
MODELS_FOLDER = "lnassist.models_folder"  # Girder folder id of the models ("": none)
# Batches (folder runs, auto-run, schedules): at most this many of their jobs queued or running in the
# worker at once, so a person's "Run LN analysis" waits behind at most this many batch jobs.
BATCH_IN_FLIGHT = "lnassist.batch_max_in_flight"
BATCH_ATTEMPTS = "lnassist.batch_max_attempts"  # tries per slide before it is reported failed
SERVICE_USER = "lnassist.service_user"  # login of the non-admin user auto-run and schedules run as
KEYS = (
    DEFAULT_MODE,
    THRESHOLDS,
    ANALYSIS_IMAGE,
    MODELS_FOLDER,
    BATCH_IN_FLIGHT,
    BATCH_ATTEMPTS,
    SERVICE_USER,
)

SettingDefault.defaults.update(
    {
        DEFAULT_MODE: constants.DEFAULT_MODE,
        THRESHOLDS: dict(constants.THRESHOLDS),
        ANALYSIS_IMAGE: "",
        MODELS_FOLDER: "",
        BATCH_IN_FLIGHT: 2,
        BATCH_ATTEMPTS: 3,
        SERVICE_USER: "lnassist-service",
    }
)

# A Docker image reference as slicer_cli_web registers it: [registry[:port]/]name[:tag][@digest].
_IMAGE = re.compile(r"^[a-z0-9]+(?:[._:/-][a-zA-Z0-9_.-]+)*(?:@sha256:[0-9a-f]{64})?$")
_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


@setting_utilities.validator(DEFAULT_MODE)
def _validate_mode(doc: dict[str, Any]) -> None:
    if doc["value"] not in constants.MODES:
        raise ValidationException(
            f"{DEFAULT_MODE} must be one of {', '.join(constants.MODES)}, got {doc['value']!r}", "value"
        )


@setting_utilities.validator(THRESHOLDS)
def _validate_thresholds(doc: dict[str, Any]) -> None:
    value = doc["value"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    message = (
        f"{THRESHOLDS} must be a JSON object giving every mode ({', '.join(constants.MODES)}) "
        f"a threshold in [0, 1], e.g. {json.dumps(constants.THRESHOLDS)}"
    )
    if not isinstance(value, dict) or set(value) != set(constants.MODES):
        raise ValidationException(f"{message}; got {doc['value']!r}", "value")
    for mode, threshold in value.items():
        ok = isinstance(threshold, int | float) and not isinstance(threshold, bool)
        if not (ok and math.isfinite(threshold) and 0 <= threshold <= 1):
            raise ValidationException(f"{message}; {mode!r} is {threshold!r}", "value")
    doc["value"] = {mode: float(value[mode]) for mode in constants.MODES}


@setting_utilities.validator(ANALYSIS_IMAGE)
def _validate_image(doc: dict[str, Any]) -> None:
    value = doc["value"]
    if not isinstance(value, str) or (value.strip() and not _IMAGE.match(value.strip())):
        raise ValidationException(
            f"{ANALYSIS_IMAGE} must be a Docker image name such as 'lnassist:0.1.0' (or empty), "
            f"got {value!r}",
            "value",
        )
    doc["value"] = value.strip()


@setting_utilities.validator(MODELS_FOLDER)
def _validate_models_folder(doc: dict[str, Any]) -> None:
    value = doc["value"]
    if not isinstance(value, str):
        raise ValidationException(f"{MODELS_FOLDER} must be a folder id (or empty), got {value!r}", "value")
    value = value.strip()
    if value and not (_OBJECT_ID.match(value) and Folder().load(value, force=True)):
        raise ValidationException(f"{MODELS_FOLDER}: no folder with id {value!r}", "value")
    doc["value"] = value


@setting_utilities.validator({BATCH_IN_FLIGHT, BATCH_ATTEMPTS})
def _validate_count(doc: dict[str, Any]) -> None:
    value = doc["value"]
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValidationException(
            f"{doc['key']} must be a whole number from 1 to 1000, got {doc['value']!r}", "value"
        )
    doc["value"] = value


# A login Girder accepts (it lower-cases logins and refuses '@'), starting with a letter.
_LOGIN = re.compile(r"^[a-z][a-z0-9._-]{2,63}$")


@setting_utilities.validator(SERVICE_USER)
def _validate_service_user(doc: dict[str, Any]) -> None:
    value = doc["value"].strip().lower() if isinstance(doc["value"], str) else doc["value"]
    if not isinstance(value, str) or not _LOGIN.match(value):
        raise ValidationException(
            f"{SERVICE_USER} must be a login (3-64 lower-case letters, digits, '.', '-', '_'), "
            f"got {doc['value']!r}",
            "value",
        )
    doc["value"] = value


# Folder metadata key choosing the default mode of the slides below the folder (nearest folder wins).
FOLDER_MODE_META = dsa.METADATA_PREFIX + "default_mode"


def default_mode(folder: dict[str, Any] | None) -> str:
    """The mode "Run LN analysis" uses for a slide in ``folder``: the nearest folder up the tree
    whose metadata sets a valid FOLDER_MODE_META (a study of screening cases, say), else the
    lnassist.default_mode setting. An invalid folder value is skipped, never used."""
    seen = set()
    while folder is not None and folder["_id"] not in seen:
        seen.add(folder["_id"])
        mode = (folder.get("meta") or {}).get(FOLDER_MODE_META)
        if mode in constants.MODES:
            return mode
        if folder.get("parentCollection") != "folder":
            break
        folder = Folder().load(folder["parentId"], force=True)
    return Setting().get(DEFAULT_MODE)


def current() -> dict[str, Any]:
    """Every setting's value (its default where unset)."""
    return {key: Setting().get(key) for key in KEYS}
