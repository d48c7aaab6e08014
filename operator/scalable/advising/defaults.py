"""The advisors' defaults, once: the LearnedAdvisor's signature and the AdvisorModel CRD use these.

Kept apart from the estimators so the custom resource models can read them without
importing scikit-learn.
"""

from __future__ import annotations

__all__ = ["CONFIDENCE_THRESHOLD", "COVERAGE", "MIN_HISTORY", "MODEL_TYPE"]

#: the learner behind the LearnedAdvisor
MODEL_TYPE = "gradient_boosting"
#: the promised share of future runs whose peak memory fits the recommendation
COVERAGE = 0.95
#: runs of a task before the learned model answers for it (users are told 5)
MIN_HISTORY = 5
#: below this confidence the ResourceAdvisor answers instead
CONFIDENCE_THRESHOLD = 0.2
