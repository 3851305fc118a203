"""The read path: the reader service and what it serves. Imports no faust, tensorflow or implicit."""

import os as _os

# Per-request products are small (one user against the catalogue): BLAS threads only add
# contention with the event loop; a reader scales by running more processes. Effective only
# when this package is imported before numpy, as ``driftrec serve`` does.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
