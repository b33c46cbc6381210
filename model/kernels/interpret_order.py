"""Triton's interpreter runs a launch's programs in a shuffled order, as a GPU may.

The interpreter runs program (0, 0, 0) first and the last program id last, one after another.
A GPU runs them in any order and at once. So a kernel whose last-arriving program finishes a
group's work (the split merges, the indexer's pick, the arrival counts of ``launch.arrivals``)
only ever met one arrival order in CI: the last program id last. ``install()`` maps the
interpreter's sequential program index through a fresh seeded permutation for every launch, so
any program may arrive last and the tests check each kernel under many orders. (Programs still
run one at a time: overlap, the rest of the race, is the GPU race test's job.) Installed for
every test that interprets kernels (tests/conftest.py); process-wide, once."""

from __future__ import annotations

import numpy as np
from triton.runtime import interpreter as ti

_installed = False


def install(seed: int = 0) -> None:
    """Shuffle every interpreted launch's program order from now on (idempotent)."""
    global _installed
    if _installed:
        return
    rng = np.random.default_rng(seed)
    b = ti.InterpreterBuilder
    set_grid_dim, set_grid_idx = b.set_grid_dim, b.set_grid_idx

    def shuffled_dim(self, nx, ny, nz):
        set_grid_dim(self, nx, ny, nz)
        self.program_order = rng.permutation(nx * ny * nz)

    def shuffled_idx(self, x, y, z):
        _, ny, nz = self.grid_dim
        j = int(self.program_order[(x * ny + y) * nz + z])   # the loop's z is innermost
        set_grid_idx(self, j // (ny * nz), (j // nz) % ny, j % nz)

    b.set_grid_dim, b.set_grid_idx = shuffled_dim, shuffled_idx
    _installed = True
