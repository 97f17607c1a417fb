"""Pure-PyTorch volume-rendering core: packed samples, per-ray scans, NeuS alpha, occupancy grid."""
