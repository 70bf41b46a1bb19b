"""Verification and measurement beyond the per-unit benches: formal checks of the emitted
Verilog (``formal``, with its SystemVerilog harness in ``formal/``), fault injection that mutates
the Verilog and checks the regressions catch it (``fault_inject``), the opt-in long random
regression (``long_regression``) and its report (``regression_report``), the throughput and
latency measurements (``measure_throughput``, ``measure_backward``) and the golden model's error
against float64 Range BN with its bounds (``error_bounds``). Each is a script
(``python -m sim.verify.<name>``) whose functions the tests also call."""
