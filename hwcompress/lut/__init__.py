"""Latency lookup tables (LUTs): record per-layer latency ON a device, predict models from it anywhere.

Mobile and edge devices cannot run the search, so their latency comes from a table recorded on the
device itself (``hwcompress lut record``). The rooms:

- :mod:`~hwcompress.lut.keys`: a layer configuration as the runtime runs it (the table's key);
- :mod:`~hwcompress.lut.table`: the file (load with validation, save, merge, provenance checks);
- :mod:`~hwcompress.lut.predict`: interpolation, calibration, coverage, and the LUT predictor that
  follows the profiler contract;
- :mod:`~hwcompress.lut.units`: a model's recordable layers and their channel grids;
- :mod:`~hwcompress.lut.recorder` and :mod:`~hwcompress.lut.calibration`: timing on the device (no
  PyTorch needed);
- :mod:`~hwcompress.lut.record`: recording from a PyTorch model (here, or as a plan for elsewhere);
- :mod:`~hwcompress.lut.plan`: timing a plan on a device without PyTorch.
"""
