"""Downstream evaluation pieces: frozen-feature probes, dense-task losses and heads, metrics. The LightningModules
that train with them (`DenseFinetune`, `LinearProbe`) are methods (`mimzoo.methods`)."""
from .dense import berhu_loss, normal_loss, scale_crop, segmentation_metrics, silog_loss
from .features import extract
from .fewshot import cyanure_preprocess, fewshot_on_features, fewshot_splits, fit_logistic
from .heads import DPTHead, LinearHead
from .knn import knn_predict
from .linear import ProbeHead, linear_grid_on_features, linear_probe_on_features
from .metrics import DepthMetrics, SurfaceNormalMetrics
from .monitor import KNNMonitor
from .pooling import pooled

__all__ = ["knn_predict", "DepthMetrics", "SurfaceNormalMetrics", "extract", "pooled", "DPTHead", "berhu_loss",
           "normal_loss", "scale_crop", "segmentation_metrics", "silog_loss", "ProbeHead", "LinearHead",
           "linear_probe_on_features", "linear_grid_on_features", "fewshot_on_features", "fewshot_splits",
           "fit_logistic", "cyanure_preprocess", "KNNMonitor"]
