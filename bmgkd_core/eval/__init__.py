"""COCO evaluation: :class:`CocoEvaluator`, :func:`score_predictions`, :func:`evaluate_detector`."""

from bmgkd_core.eval.coco_eval import (
    CocoEvaluator,
    CocoMetrics,
    evaluate_detector,
    score_predictions,
)

__all__ = ["CocoEvaluator", "CocoMetrics", "evaluate_detector", "score_predictions"]
