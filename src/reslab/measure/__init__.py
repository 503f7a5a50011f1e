"""Measurements on a model, no training: what happens inside plain and residual nets.

Each measurement is a function of a model (and a batch, or a scoring function) that returns
plain numbers; none trains, loads data or writes files, so the studies in
:mod:`reslab.experiments` decide what to measure and this package only how. It imports torch,
numpy and the public types of :mod:`reslab.blocks` and :mod:`reslab.models` alone
(``tests/measure/test_imports.py`` holds that rule).

* :mod:`~reslab.measure.probes`: gradient flow, residual magnitude, layer responses (He et al.
  2015 §4.2, He et al. 2016 §3).
* :mod:`~reslab.measure.lesion`: deleting and swapping blocks at test time (Veit et al. 2016).
  Its parts: :mod:`~reslab.measure.lesion_sites` (the sites, deletions and swaps),
  :mod:`~reslab.measure.prefix` (runs from a net's middle), :mod:`~reslab.measure.inference`
  (BN folded for the lesion passes, their precision).
* :mod:`~reslab.measure.landscape`: filter-normalised loss surfaces (Li et al. 2018).
* :mod:`~reslab.measure.shattering`: input-gradient correlations (Balduzzi et al. 2017).
* :mod:`~reslab.measure.signal`: signal propagation plots, the forward signal's channel means
  and variances block by block (Brock et al. 2021).
"""
