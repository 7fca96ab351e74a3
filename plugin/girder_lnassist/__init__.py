"""The Girder 3 plugin of lnassist: its server side in the Digital Slide Archive.

Nothing heavy ever runs here: the Girder server never imports torch or the models. The analysis
itself is a Slicer CLI job (slicer_cli_web) in the lnassist Docker image; this package will own what
the server adds around it, reading names, modes and models from lnassist's standard-library-only
contract modules (:mod:`lnassist.dsa`, :mod:`lnassist.constants`, :mod:`lnassist.registry`).

Modules: ``settings`` (keys, defaults, validators), ``documents`` (pure logic over LN documents:
current document, LN rows, changes, counts), ``review`` (pure review rules and record), ``store``
(the plugin's review record and the save guards), ``queries`` (database reads), ``launch``
("Run LN analysis" through slicer_cli_web), ``supersede`` (a new AI run replaces the earlier untouched
AI documents), ``job_outputs`` (a job's uploaded files marked as outputs, not slides),
``reconcile`` (jobs whose end Girder missed, ended from the worker's record), ``lease`` (which
process runs the background work), ``batches`` (batches of slides and their per-slide state),
``dispatch`` (runs the batches' slides as jobs, a bounded number at a time), ``autorun`` (new
slides in switched-on folders), ``schedules`` (admins' timed batches), ``rest`` and
``rest_batches`` (the ``/lnassist`` resource).
"""

from __future__ import annotations

from girder.plugin import GirderPlugin, getPlugin

# What the plugin builds on (its web client extends HistomicsUI's image view and slicer_cli_web's
# panels), in load order: each one's routes and models must exist before ours.
DEPENDENCIES = ("jobs", "slicer_cli_web", "large_image_annotation", "histomicsui")


class LnassistPlugin(GirderPlugin):
    DISPLAY_NAME = "LN assist (AI lymph-node analysis)"
    CLIENT_SOURCE_PATH = "web_client"

    def load(self, info):
        for name in DEPENDENCIES:
            getPlugin(name).load(info)
        # Imported here: they need the server's models, which exist once the plugins above loaded.
        from girder import events
        from girder.utility.model_importer import ModelImporter

        from . import (
            autorun,
            batches,
            dispatch,
            job_outputs,
            reconcile,
            rest,
            schedules,
            settings,  # noqa: F401 (its validators)
            store,
            supersede,
        )

        ModelImporter.registerModel("lnassist_review", store.ReviewRecord, "lnassist")
        ModelImporter.registerModel("lnassist_batch", batches.Batch, "lnassist")
        ModelImporter.registerModel("lnassist_batch_task", batches.BatchTask, "lnassist")
        ModelImporter.registerModel("lnassist_schedule", schedules.Schedule, "lnassist")
        events.bind("model.annotation.save", "lnassist", store.guard_annotation_save)
        events.bind("model.item.save", "lnassist", store.guard_item_save)
        supersede.bind()
        job_outputs.bind()
        reconcile.start()
        autorun.bind()
        dispatch.start()
        info["apiRoot"].lnassist = rest.LnassistResource()
