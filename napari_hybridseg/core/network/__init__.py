"""The segmentation network (:mod:`.models`: build, save, load, forward) and the device it runs on
(:mod:`.device`: CUDA / MPS / CPU, precision, CPU threads)."""
