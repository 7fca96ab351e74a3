"""The Girder 3 plugin of lnassist: its server side in the Digital Slide Archive.

Nothing heavy ever runs here: the Girder server never imports torch or the models. The analysis
itself is a Slicer CLI job (slicer_cli_web) in the lnassist Docker image; this package will own what
the server adds around it, reading names, modes and models from lnassist's standard-library-only
contract modules (:mod:`lnassist.dsa`, :mod:`lnassist.constants`, :mod:`lnassist.registry`).
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
