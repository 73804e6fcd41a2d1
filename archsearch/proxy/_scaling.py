"""The scaling and data rules shared by every proxy (defined with the other options in :mod:`archsearch.options`)."""
from ..options import DataRule, ScalingRule

__all__ = ["DataRule", "ScalingRule"]
