"""pytest-benchmark suites for msca_kernels and the report writer (`python -m benchmarks.report`).

Run with `pytest benchmarks` (named explicitly: pyproject's testpaths keeps `make test` to tests/).
"""
