"""Evaluation of Table 1 (paper Sec. 4): tasks, retrieval, metrics, the table."""
from .evaluate import METHODS, TASKS, evaluate, format_table, procedural_tasks
from .metrics import (LPIPS, UNAVAILABLE, InceptionFeatures, fid, frechet_distance,
                      gaussian_stats, psnr, ssim, style_loss)
from .retrieval import (color_correct, histogram_intersection, label_histogram, lab_to_rgb,
                        retrieve, rgb_to_lab)

__all__ = ["InceptionFeatures", "LPIPS", "METHODS", "TASKS", "UNAVAILABLE", "color_correct",
           "evaluate", "fid", "format_table", "frechet_distance", "gaussian_stats",
           "histogram_intersection", "lab_to_rgb", "label_histogram", "procedural_tasks",
           "psnr", "retrieve", "rgb_to_lab", "ssim", "style_loss"]
