"""Everything that is not hardware: ``sim.model`` (the golden models and the float64 reference),
``sim.bench`` (the cocotb benches and their shared driver), ``sim.verify`` (formal checks, fault
injection, long regressions, measurements) and ``sim.apps`` (the PyTorch layer, the training
study, the board host program). ``hw/`` imports nothing from here (``tests/test_layers.py``)."""
