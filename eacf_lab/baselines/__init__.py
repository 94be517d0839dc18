"""Baselines the E-ACF is compared against (paper Sec. 6): the E-CNF trained by flow matching.

    from eacf_lab import data, pretrained
    from eacf_lab.baselines import ecnf_nll, fit_ecnf, make_ecnf
    model = make_ecnf(jax.random.key(0), n_nodes=4, dim=2)
    x, log_q = model.sample_and_log_prob(key=jax.random.key(1))   # one ODE solve
    model, history = fit_ecnf(model, data.load("dw4", "train"), key=jax.random.key(2), epochs=10)
    nll, se = ecnf_nll(model, data.load("dw4", "test")[:100])     # exact: one solve per point
    model, info = pretrained.load("dw4-ecnf")                    # the shipped DW4 E-CNF
"""

from .ecnf import ECNF, ecnf_from_config, flow_matching_loss, kabsch_align, make_ecnf
from .ecnf_train import ecnf_nll, ecnf_sample_and_log_prob, fit_ecnf

__all__ = ["ECNF", "make_ecnf", "ecnf_from_config", "flow_matching_loss", "kabsch_align", "fit_ecnf", "ecnf_nll",
           "ecnf_sample_and_log_prob"]
