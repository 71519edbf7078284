"""Builders shared by several test files (importable because pyproject puts ``tests/`` on ``pythonpath``).

- :mod:`helpers.paths`: the repository root, its configs and the shared reference data.
- :mod:`helpers.config`: Hydra configs composed from the real ``configs/`` and the tiny-cohort overrides.
- :mod:`helpers.subjects`: small BraTS-style NIfTI subjects written to disk, and a cohort of them.
- :mod:`helpers.radiomics`: small PyRadiomics settings and an independent reference extraction.
- :mod:`helpers.runif`: ``run_if(gpu=True)``, a skip-with-a-reason marker for hardware-bound tests.

Test files import these instead of importing each other (``from test_radiomics import _write_subject``
made one test module a library for five others, and a private one at that).
"""
