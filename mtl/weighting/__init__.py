"""Loss-balancing engine: task-weighting methods and the backends that apply them.

Usage::

    from mtl.weighting import create_weighting, multitask_backward

    weighting = create_weighting("nash_mtl", num_tasks=3, max_norm=1.0)
    w = multitask_backward(weighting, losses, present, model.shared_parameters(),
                           head_params, representation=z, backend="full")

Every method lives in its own module and registers itself with ``@register_weighting``;
``list_weightings()`` gives the names. See ``docs/weighting.md`` for the table of methods.
"""

from __future__ import annotations

from mtl.weighting import (  # noqa: F401  (imported for their @register_weighting side effect)
    aligned_mtl,
    cagrad,
    conflictfree,
    db_mtl,
    dualproj,
    dwa,
    equal,
    excess_mtl,
    fairgrad,
    famo,
    gls,
    graddrop,
    gradnorm,
    gradvac,
    imtl,
    mgda,
    moco,
    modo,
    nash_mtl,
    pcgrad,
    rlw,
    sdmgrad,
    static,
    stch,
    uncertainty,
    upgrad,
)
from mtl.weighting.backward import (
    backward_passes,
    multitask_backward,
    set_vmapped_gradients,
    task_gradient_cosine,
)
from mtl.weighting.base import GradientWeighting, GramWeighting, Weighting
from mtl.weighting.registry import (
    create_weighting,
    get_weighting_class,
    hyperparameters,
    list_weightings,
    register_weighting,
)

__all__ = [
    "GradientWeighting",
    "GramWeighting",
    "Weighting",
    "backward_passes",
    "create_weighting",
    "get_weighting_class",
    "hyperparameters",
    "list_weightings",
    "multitask_backward",
    "register_weighting",
    "set_vmapped_gradients",
    "task_gradient_cosine",
]
