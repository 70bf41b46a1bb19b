"""The cocotb benches of the emitted Verilog (Verilator, or Icarus): ``common`` is the shared
driver (building and running a cocotb module with :func:`~sim.bench.common.run_cocotb`, stream
sources and sinks with random input gaps and random back-pressure, packing, the configuration
passed to the cocotb process), and each other module holds the ``@cocotb.test`` coroutines and the
stimulus plans of one unit (``forward_core``, ``backward_core``, ``bfp_shifter``, ``board_uart``,
``reset``), run by name from ``tests/``, ``sim.verify`` and each other."""
