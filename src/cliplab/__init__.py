"""cliplab: CLIP (Radford et al. 2021), complete and verified against the references."""

__version__ = "0.1.0"
