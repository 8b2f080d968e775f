"""What ``method="verify"`` is asked to do: :class:`VerifyConfig`, the default estimate and
the stopping rule in words (the rule itself: :mod:`tlatlas.atlas.verify`).

Kept apart from the verification so that code which only *describes* a verify run (the
pipeline's arguments, an atlas file's metadata) does not import it: an experiment block's
recorded code version is the hash of what it imports (``experiments/provenance.py``), and
the exact atlas must not be recomputed when verification changes.
"""

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tlatlas.atlas.estimate_spec import FIRST_ORDER, Estimator
from tlatlas.errors import InvalidInputError

DEFAULT_ESTIMATOR = Estimator(method="bound")
"""The estimate verify ranks by (chosen by measurement, docs/estimate-verify.md)."""
STOPPING_RULES = {
    "patience": ("verify in order (top_k + patience first, then patience at a time); stop when "
                 "none of the last `patience` verified entries is in the exact top_k of all "
                 "verified entries (ties to the earlier), or all are verified"),
    "bound": ("layer map: verify in order (top_k + patience first, then patience at a time); "
              "stop when the largest exact/score ratio among verified entries times the "
              "largest unverified score is below the k-th exact value (an estimated bound), "
              "or all are verified; position map: the patience rule"),
}
"""Each stopping rule in words (the rules: :mod:`tlatlas.atlas.verify`)."""
STOPPING_RULE = STOPPING_RULES["patience"]
"""The default rule in words."""
LayerRanking = Literal["pooled", "per_component"]
Rule = Literal["patience", "bound"]


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    """How ``method="verify"`` ranks and when it stops."""

    top_k: int = 5
    """Entries of each ranking whose exact values must be settled."""
    patience: int | None = None
    """Entries verified per round after the first ``top_k + patience``; under the
    ``patience`` rule also the verified entries in a row that must fail to enter the top
    ``top_k`` (default ``2 * top_k``; under ``bound``, ``top_k``)."""
    rule: Rule = "patience"
    """When a layer-map ranking is settled (:data:`STOPPING_RULES`): ``patience`` trusts
    the order for ``patience`` entries past the last change of the exact top; ``bound``
    stops when the order's score, scaled by the worst under-statement seen among verified
    entries, says no unverified entry can enter the top (fewer entries, measured recall
    below 1 in a few percent of bootstrap replicates: ``docs/estimate-verify.md``). The
    position map always uses ``patience``."""
    rank_metric: str = "kl"
    """Metric the entries are ranked by; without its estimate, ``|dlogp|`` ranks."""
    estimator: Estimator = field(default_factory=lambda: DEFAULT_ESTIMATOR)
    """The estimate that orders the verification."""
    layer_ranking: LayerRanking = "pooled"
    """``pooled``: one ranking of every (component, layer) entry, plus the ``block``
    ranking's top 1 (the hub); ``per_component``: the top ``top_k`` of each component."""
    screen: int = 1
    """Layer map: order the entries by the **exact** map on the first ``screen`` examples
    of each family (an exact screen: unbiased, no curvature error; it costs ``screen /
    examples per family`` of the exact map); 0: by the estimate. Without a position map
    the screen also fills unverified entries and no gradient pass runs; with one, the
    estimate still fills them and orders the position map. The default, 1, because the
    gradient order missed the exact top 5 in 23% of bootstrap replicates (SmolLM2, mean
    ablation) where a one-example screen missed none (``benchmarks/verify_rules.py``,
    ``docs/estimate-verify.md``)."""
    screen_share: float = 0.25
    """With a position map, the screen is taken only when its examples are at most this
    share of the atlas's; else the estimate orders the layer map. A positions run pays for
    the gradient pass anyway (it orders the position map), so there the screen is extra
    cost: exact layer rows for its examples, a share of the exact layer map that a small
    position atlas makes large (one per family of 3 families in 6 examples: half)."""
    scored_first: bool = True
    """Position map: verify every layer's cell at the scored position up front (a
    one-token suffix each: together about ``1 / width**2`` of the exact map), then the
    rest in estimate order. The scored position's cells are where the largest effects
    are, and the ones an estimate orders worst among themselves (measured)."""
    chunk: int = 4
    """Position map: cells whose positions fall in one chunk ``[a, a + chunk)`` share a
    forward from ``a`` (with the clean keys/values of earlier positions)."""
    max_rows: int = 64
    """Rows per verification forward: of the position map, and of the layer map, where
    entries of nearby layers share a forward (never fewer rows than an exact-path forward
    holds, 3 x batch)."""

    def __post_init__(self) -> None:
        if self.rule not in STOPPING_RULES:
            raise InvalidInputError(f"rule must be one of {', '.join(STOPPING_RULES)}, not "
                                    f"{self.rule!r}")
        if self.layer_ranking not in ("pooled", "per_component"):
            raise InvalidInputError(f"layer_ranking must be pooled or per_component, not "
                                    f"{self.layer_ranking!r}")
        if self.top_k < 1:
            raise InvalidInputError(f"top_k must be >= 1, got {self.top_k}")
        if self.patience is not None and self.patience < 1:
            raise InvalidInputError(f"patience must be >= 1, got {self.patience}")
        if self.rank_metric not in ("kl", "dlogp"):
            raise InvalidInputError(f"rank_metric must be kl or dlogp, not {self.rank_metric!r}")
        if self.estimator.method == "ig" and self.estimator.steps > 1:
            raise InvalidInputError("verify needs an estimate cheaper than the exact map: "
                                    "use bound, fisher_bound, fisher, ig_joint, graddrop or "
                                    "first order, not ig")
        if self.rank_metric == "dlogp" and "dlogp" not in self.estimator.metrics:
            raise InvalidInputError(f"{self.estimator.name} estimates {', '.join(self.estimator.metrics)}"
                                    " only: rank by kl")
        if self.screen < 0:
            raise InvalidInputError(f"screen must be >= 0 examples per family (0: order by the "
                                    f"estimate), got {self.screen}")
        if not 0.0 <= self.screen_share <= 1.0:
            raise InvalidInputError(f"screen_share must be in [0, 1], got {self.screen_share}")
        if self.max_rows < 1 or self.chunk < 1:
            raise InvalidInputError("max_rows and chunk must be >= 1")

    @property
    def window(self) -> int:
        """The patience (entries per round) in use."""
        if self.patience is not None:
            return self.patience
        return 2 * self.top_k if self.rule == "patience" else self.top_k

    def to_dict(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "patience": self.window, "rank_metric": self.rank_metric,
                "layer_ranking": self.layer_ranking, "scored_first": self.scored_first,
                "screen": self.screen, "screen_share": self.screen_share,
                "estimator": self.estimator.to_dict(), "stopping": self.rule,
                "rule": STOPPING_RULES[self.rule]}


def estimate_settings(method: str, estimator: Estimator | None, steps: int | None,
                      top_k: int, patience: int | None, screen: int | None = None,
                      rule: Rule = "patience") -> tuple[Estimator, VerifyConfig | None]:
    """The estimate of ``method`` (attribution or verify) and, for verify, its config, from
    :func:`tlatlas.atlas.pipeline.build_atlas`'s arguments."""
    if method == "attribution":
        if screen is not None or rule != "patience":
            raise InvalidInputError("screen and rule apply to verify, not attribution")
        est = estimator or (FIRST_ORDER if steps in (None, 1) else
                            Estimator(method="ig_joint", steps=steps))
        return (est if steps is None else replace(est, steps=steps)), None
    if method == "verify":
        est = estimator or DEFAULT_ESTIMATOR
        est = est if steps is None else replace(est, steps=steps)
        screened = {} if screen is None else {"screen": screen}
        return est, VerifyConfig(top_k=top_k, patience=patience, estimator=est, rule=rule,
                                 **screened)
    raise InvalidInputError(f"{method} is not an estimating method (attribution, verify)")
