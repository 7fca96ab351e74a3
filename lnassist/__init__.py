"""lnassist: AI-assisted lymph-node metastasis assessment for the Digital Slide Archive."""

__version__ = "0.1.0"
