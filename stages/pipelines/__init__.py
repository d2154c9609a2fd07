"""Example pipelines and test problems: users of :mod:`stages`, not parts of it.

They import only the public API of ``stages`` and ``eeipu``. This package exports the light
ones; the real pipelines import scikit-learn or transformers (the ``examples`` extra,
``pip install 'eeipu[examples]'``) and are imported from their own modules:

* :mod:`stages.pipelines.synthetic`: the literature's synthetic problem
  (:class:`SyntheticProblem`) and :func:`synthetic_pipeline`.
* :mod:`stages.pipelines.simulate`: :func:`simulate`, the synthetic problem in process with
  an exactly simulated cache.
* :mod:`stages.pipelines.slept`: :func:`slept_synthetic_pipeline`, whose stages sleep their
  simulated cost.
* :mod:`stages.pipelines.ml_stacking`, :mod:`stages.pipelines.vision_cnn`,
  :mod:`stages.pipelines.t5_distill`, :mod:`stages.pipelines.pretrain_probe`: the real
  pipelines (docs/pipelines/).

Example:
    >>> from stages.pipelines import synthetic_pipeline
    >>> synthetic_pipeline().stage_names
    ['prep', 'train', 'finetune']
"""

from stages.pipelines.simulate import SimulatedCache, simulate
from stages.pipelines.slept import slept_synthetic_pipeline
from stages.pipelines.synthetic import (
    VARIANTS,
    SyntheticProblem,
    synthetic_pipeline,
    synthetic_variant,
)

__all__ = [
    "VARIANTS",
    "SimulatedCache",
    "SyntheticProblem",
    "simulate",
    "slept_synthetic_pipeline",
    "synthetic_pipeline",
    "synthetic_variant",
]
