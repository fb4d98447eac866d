"""How generated images are judged, by referees no generator was trained against: `geometric` fits the
procedural data sets' ideal shapes (no learned weights); `classifier` trains a classifier on real images only
(the judge of data without geometry) or on samples only (GAN-train); `scoring` turns either into a model's
`metrics["judged"]`."""
from __future__ import annotations

from .geometric import Judgement, judge_disks, judge_for, judge_shapes, validate
from .measure import factor_r2

__all__ = ["Judgement", "factor_r2", "judge_disks", "judge_for", "judge_shapes", "validate"]
