"""ESCNN: exact streaming training and inference of a CNN on gigapixel images (Huang et al. 2022)."""
