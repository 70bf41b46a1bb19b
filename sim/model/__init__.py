"""The models the hardware is checked against: the golden model (``golden`` for the BFP
conversion and block quantizer, ``golden_bn`` for Range BN forward and backward; plain Python
integers and ``Fraction``, the specification the RTL matches bit for bit), its vectorized NumPy
twin ``fast_bn`` (the same bits, fast enough for tensors), ``float_golden`` (the bit-exact model of
the float baselines) and ``reference`` (float64 Range BN, the mathematical reference the error
bounds are measured against). Nothing here imports an HDL."""
