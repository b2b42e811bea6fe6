"""Applications of the trained generator (paper Sec. 4): synthesis from a label map and an
exemplar, attention figures, style-structure swap grids, style interpolation and spatial
style interpolation, extrapolation, the label transfer matrix, exemplar retrieval."""
from .extrapolate import extrapolate
from .interpolate import interpolate_styles, spatial_interpolate
from .label_transfer import attention_maps, average_linkage, transfer_matrix
from .swap import swap_grid_files, swap_grid_image, swap_outputs
from .synthesize import attention_figure, synthesize, synthesize_files

__all__ = ["attention_figure", "attention_maps", "average_linkage", "extrapolate",
           "interpolate_styles", "spatial_interpolate", "swap_grid_files", "swap_grid_image",
           "swap_outputs", "synthesize", "synthesize_files", "transfer_matrix"]
