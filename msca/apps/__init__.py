"""Applications of the trained generator (paper Sec. 4): synthesis from a label map and an
exemplar, attention figures, style-structure swap grids."""
from .swap import swap_grid_files, swap_grid_image, swap_outputs
from .synthesize import attention_figure, synthesize, synthesize_files

__all__ = ["attention_figure", "swap_grid_files", "swap_grid_image", "swap_outputs",
           "synthesize", "synthesize_files"]
