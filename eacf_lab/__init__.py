"""eacf_lab: SE(3)-equivariant augmented coupling flows, for teaching and exploring."""

__version__ = "0.1.0"
