"""The ``/lnassist`` endpoints of classifier versions (mixed into the resource of :mod:`.rest`): the
list, promotion, rollback and the retrain job. Listing needs read access to the models folder; the
rest is for site admins. The logic is :mod:`.model_versions`.
"""

from __future__ import annotations

from typing import Any

from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.constants import AccessType, TokenScope
from girder.exceptions import RestException
from girder.models.folder import Folder
from girder.models.item import Item

from lnassist import promotion

from . import model_versions


class ModelRoutes:
    def route_models(self) -> None:
        self.route("GET", ("models",), self.list_models)
        self.route("POST", ("model", ":id", "promote"), self.promote_model)
        self.route("POST", ("model", ":id", "rollback"), self.rollback_model)
        self.route("POST", ("retrain",), self.retrain)

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description(
            "Every classifier version, its held-out metrics, parent and dataset, and which one is promoted."
        )
        .notes(
            "Versions are items of the models folder (lnassist.models_folder) that LNRetrain jobs "
            "uploaded; 'shipped' is the image's default, used while no version is promoted. Each "
            "version's 'gate' lists why it may not be promoted over the classifier in use (empty: "
            "it may). 'history': every promotion and rollback."
        )
        .errorResponse("You are not logged in.", 401)
        .errorResponse("Read access was denied on the models folder.", 403)
    )
    def list_models(self) -> dict[str, Any]:
        return model_versions.list_versions(self.getCurrentUser())

    @access.admin(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Promote a classifier version: analyses started from now on use it.")
        .notes(
            "Refused when the version is worse than the classifier in use on its held-out split beyond "
            "the tolerance its card records, or was evaluated against another model, unless force is "
            "given with a reason (both recorded in the promotion history)."
        )
        .modelParam("id", "The version's item.", model=Item, level=AccessType.READ, destName="item")
        .param(
            "force", "Promote although the gate refuses.", dataType="boolean", default=False, required=False
        )
        .param("reason", "Why (required with force).", required=False)
        .errorResponse("Not a version; refused by the gate; a forced promotion without a reason.", 400)
        .errorResponse("You are not a system administrator.", 403)
        .errorResponse("The promoted version changed meanwhile.", 409)
    )
    def promote_model(self, item: dict[str, Any], force: bool, reason: str | None) -> dict[str, Any]:
        return model_versions.promote(item, self.getCurrentUser(), force, reason)

    @access.admin(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Roll the promoted classifier version back to the one promoted before it.")
        .notes("Back to the image's shipped default when it was the first promotion.")
        .modelParam("id", "The promoted version's item.", model=Item, level=AccessType.READ, destName="item")
        .param("reason", "Why (recorded).", required=False)
        .errorResponse("The item is not the promoted version.", 400)
        .errorResponse("You are not a system administrator.", 403)
        .errorResponse("The promoted version changed meanwhile.", 409)
    )
    def rollback_model(self, item: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return model_versions.rollback(item, self.getCurrentUser(), reason)

    @access.admin(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Retrain the classifier on a folder's reviewed LN annotations (an LNRetrain job).")
        .notes(
            "The job collects the reviewed (accepted or corrected) slides of the folder and its "
            "subfolders into a frozen dataset snapshot, fine-tunes the classifier in use on a split by "
            "slide, evaluates both on the held-out LNs and uploads the snapshot (Datasets subfolder) "
            "and the new version as a candidate into the models folder. Nothing is uploaded when the "
            "job is cancelled. Promotion is a separate step."
        )
        .modelParam(
            "folderId",
            "The folder.",
            model=Folder,
            level=AccessType.READ,
            paramType="formData",
            destName="folder",
        )
        .param("epochs", "Fine-tuning epochs.", dataType="integer", default=2, required=False)
        .param("seed", "Seed of the split and of training.", dataType="integer", default=0, required=False)
        .param(
            "heldout_fraction", "Share of slides held out.", dataType="number", default=0.34, required=False
        )
        .param(
            "include_unreviewed",
            "Also unreviewed AI results.",
            dataType="boolean",
            default=False,
            required=False,
        )
        .param(
            "use_transition",
            "Forward-corrected loss from the snapshot.",
            dataType="boolean",
            default=False,
            required=False,
        )
        .param(
            "tolerance_auc",
            f"Promotion tolerance on AUC (default {promotion.DEFAULT_TOLERANCE['auc']}).",
            dataType="number",
            required=False,
        )
        .param(
            "tolerance_sensitivity",
            f"Promotion tolerance on sensitivity (default {promotion.DEFAULT_TOLERANCE['sensitivity']}).",
            dataType="number",
            required=False,
        )
        .errorResponse("Bad values; no models folder or image configured.", 400)
        .errorResponse("You are not a system administrator.", 403)
    )
    def retrain(
        self,
        folder: dict[str, Any],
        epochs: int,
        seed: int,
        heldout_fraction: float,
        include_unreviewed: bool,
        use_transition: bool,
        tolerance_auc: float | None,
        tolerance_sensitivity: float | None,
    ) -> dict[str, Any]:
        if not 1 <= epochs <= 1000:
            raise RestException("epochs must be within 1..1000")
        if not 0 < heldout_fraction < 1:
            raise RestException("heldout_fraction must be within (0, 1)")
        for name, value in (
            ("tolerance_auc", tolerance_auc),
            ("tolerance_sensitivity", tolerance_sensitivity),
        ):
            if value is not None and not 0 <= value <= 1:
                raise RestException(f"{name} must be within [0, 1]")
        options = {
            "epochs": epochs,
            "seed": seed,
            "heldout_fraction": heldout_fraction,
            "include_unreviewed": include_unreviewed,
            "use_transition": use_transition,
            "tolerance_auc": tolerance_auc,
            "tolerance_sensitivity": tolerance_sensitivity,
        }
        return model_versions.start_retrain(folder, self.getCurrentUser(), options)
