"""msca: example-guided scene synthesis (the paper's system) built on msca_kernels."""
