"""Users of the model and the hardware: the PyTorch layer with the hardware's exact arithmetic
(``torch_bn``, through ``sim.model.fast_bn``), the training-accuracy study built on it (``study``)
and the fine-tuning demo (``finetune_demo``), and the host program that talks to a board over UART
and checks every result against the golden model (``host``)."""
