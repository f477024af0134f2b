"""Downstream evaluation: frozen-feature probes and dense-task metrics."""
from .features import extract, pooled
from .knn import knn_predict
from .metrics import DepthMetrics, SurfaceNormalMetrics

__all__ = ["knn_predict", "DepthMetrics", "SurfaceNormalMetrics", "extract", "pooled"]
