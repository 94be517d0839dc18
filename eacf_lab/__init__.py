"""eacf_lab: SE(3)-equivariant augmented coupling flows, for teaching and exploring.

Midgley, Stimper, Antoran, Mathieu, Schoelkopf, Hernandez-Lobato, "SE(3) Equivariant
Augmented Coupling Flows", NeurIPS 2023 (arXiv 2308.10364).

    import eacf_lab as el
    flow = el.make_flow(key, n_nodes=13, dim=3, projection="spherical")
    x, a, log_q = flow.sample_and_log_prob(key)

Each building block lives in its own short module (see the README's map of the code).
"""

__version__ = "0.1.0"

from eacf_lab import checkpoint, data, geometry, pretrained, projections, targets, testing, train
from eacf_lab.checkpoint import load, save
from eacf_lab.estimators import forward_ess, marginal_log_prob, reverse_ess, reverse_ess_se
from eacf_lab.factory import flow_from_config, make_flow
from eacf_lab.flow import AugmentedFlow
from eacf_lab.geometry import (aug_gaussian_log_prob, center_of_mass, random_permutation, random_rotation,
                               remove_com, sample_zero_com_gaussian, zero_com_gaussian_log_prob)
from eacf_lab.shift_com import shift_com

__all__ = [
    "AugmentedFlow", "make_flow", "flow_from_config", "marginal_log_prob", "reverse_ess", "reverse_ess_se",
    "forward_ess",
    "random_rotation", "random_permutation", "remove_com", "center_of_mass", "zero_com_gaussian_log_prob",
    "sample_zero_com_gaussian", "aug_gaussian_log_prob", "shift_com", "save", "load",
    "checkpoint", "data", "geometry", "pretrained", "projections", "targets", "testing", "train",
]
