"""Data for msca: procedural scenes with exact cross-scene ground truth, label folders,
COCO-stuff outdoor scenes, and the paper's augmentations and patch sampling."""
from .procedural import (CLASS_NAMES, LABEL_COLORS, NUM_CLASSES, CrossScenePairs, Layout,
                         ProceduralScenes, Style, cross_scene_item, layout_from_seed, render,
                         sample_layout, sample_style, scene_seed, style_from_seed)
from .transforms import (Box, colorize_labels, crop, crop_pair, hflip, label_palette,
                         patch_pair_task, random_hflip, resize_pair, sample_patch_pair,
                         tensor_to_pil, to_tensor_image)
from .folder import LabelFolder, load_image, load_label
from .coco_stuff import CocoStuff, INDOOR_STUFF, OUTDOOR_STUFF, is_outdoor, scan_outdoor

__all__ = [
    "CLASS_NAMES", "LABEL_COLORS", "NUM_CLASSES", "CrossScenePairs", "Layout", "ProceduralScenes",
    "Style", "cross_scene_item", "layout_from_seed", "render", "sample_layout", "sample_style",
    "scene_seed", "style_from_seed",
    "Box", "colorize_labels", "crop", "crop_pair", "hflip", "label_palette", "patch_pair_task",
    "random_hflip", "resize_pair", "sample_patch_pair", "tensor_to_pil", "to_tensor_image",
    "LabelFolder", "load_image", "load_label",
    "CocoStuff", "INDOOR_STUFF", "OUTDOOR_STUFF", "is_outdoor", "scan_outdoor",
]
