"""Downstream evaluation: frozen-feature probes and dense-task metrics."""
from .dense import DenseFinetune, berhu_loss, normal_loss, segmentation_metrics, silog_loss
from .features import extract, pooled
from .fewshot import cyanure_preprocess, fewshot_probe, fewshot_splits, fit_logistic
from .heads import DPTHead, LinearHead
from .knn import knn_predict
from .linear import LinearProbe, ProbeHead, MAELars, linear_probe_features
from .metrics import DepthMetrics, SurfaceNormalMetrics

__all__ = ["knn_predict", "DepthMetrics", "SurfaceNormalMetrics", "extract", "pooled",
           "DenseFinetune", "DPTHead", "berhu_loss", "normal_loss", "segmentation_metrics", "silog_loss",
           "LinearProbe", "ProbeHead", "LinearHead", "MAELars", "linear_probe_features", "fewshot_probe", "fewshot_splits",
           "fit_logistic", "cyanure_preprocess"]
