"""The ``lime`` method: LIME's tabular explainer on the background data.

For each explained row LIME draws ``num_samples`` perturbed rows, has the model predict
them, and fits a ridge regression (weighted by closeness to the row) per explained
output. The surrogate's coefficients are the attributions, its intercept the base value.

Discretisation: quartiles of the background (LIME's own default), chosen because
- the interpretable features are then binary ("this feature is in the row's quartile"),
  all 1 for the explained row itself, so a coefficient is directly the feature's
  attribution and ``intercept + sum(coefficients)`` is the surrogate's prediction at the
  row: the same additive shape as SHAP's answers;
- quartiles ignore each feature's scale and outliers, so no standardisation choice
  leaks into the weights (without discretisation LIME fits on z-scores drawn around
  the background mean, far from the row for a non-linear model);
- 4 bins hold 25 of the default 100 background rows each, enough for stable bin
  statistics; deciles (10 rows a bin) are noisier and make "same bin" rarer, so they
  need more samples; entropy bins need training labels the sidecar does not have.

Reproducible: one RandomState, reseeded before each row, so the same row always gets
the same answer, alone or in a batch, from any replica.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from kustos.runtime.server.tensors import Array

# Standard library only at import: `kustos explain` reads these bounds for its flags.
DEFAULT_SAMPLES = 1000
MIN_SAMPLES = 100
MAX_SAMPLES = 20000


def _quartiles(bg: Array, names: list[str], rs: np.random.RandomState) -> Any:
    import numpy as np
    from lime.discretize import QuartileDiscretizer

    class Quartiles(QuartileDiscretizer):  # type: ignore[misc]
        """LIME's quartiles, with degenerate bins (min == max: a constant column, a
        repeated integer value) sampled as that value; LIME 0.2 returns the bin's z-score
        (0) there, shifting every perturbed row's input."""

        def get_undiscretize_values(self, feature: int, values: Array) -> Array:
            out = np.asarray(super().get_undiscretize_values(feature, values))
            mins = np.array(self.mins[feature])[values]
            same = mins == np.array(self.maxs[feature])[values]
            out[same] = mins[same]
            return out

    return Quartiles(bg, [], names, random_state=rs)


def lime_parts(fn: Callable[[Array], Array], n_outputs: int, bg: Array, names: list[str],
               num_samples: int, seed: int
               ) -> tuple[Callable[[], Any], Callable[[Any, Array], tuple[Array, Array]], str]:
    """(make, run, algorithm) for methods.Explainer."""
    import numpy as np

    if not MIN_SAMPLES <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"num_samples must be {MIN_SAMPLES}..{MAX_SAMPLES}")
    n_features = bg.shape[1]
    labels = tuple(range(n_outputs))

    def make() -> Any:
        from lime.lime_tabular import LimeTabularExplainer

        rs = np.random.RandomState(seed)
        # "classification" is LIME's name for fitting one surrogate per column of a 2-D
        # output: used for every target (class probabilities, and a regressor's single
        # prediction column alike); its "regression" mode only reshapes to that.
        # feature_selection "none": every feature gets a weight, as with SHAP.
        return LimeTabularExplainer(bg, mode="classification", feature_names=names,
                                    discretizer=_quartiles(bg, names, rs),
                                    feature_selection="none", random_state=rs)

    def run(impl: Any, x: Array) -> tuple[Array, Array]:
        values = np.zeros((x.shape[0], n_features, n_outputs))
        base = np.zeros((x.shape[0], n_outputs))
        for r, row in enumerate(x):
            impl.random_state.seed(seed)  # shared with the discretizer and the ridge fit
            exp = impl.explain_instance(row, fn, labels=labels, num_features=n_features,
                                        num_samples=num_samples)
            for k in labels:
                base[r, k] = exp.intercept[k]
                for j, weight in exp.local_exp[k]:
                    values[r, j, k] = weight
        return values, base

    return make, run, f"lime tabular (quartile bins, {num_samples} samples, seed {seed})"
