"""The numba backend: CPU kernels for row updates (``update``) and bag input scans (``scan``).

Imported only through the registry (``ops/registry.py``), which treats a failed import
(numba missing) as "not available".
"""
