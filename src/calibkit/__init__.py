"""calibkit: calibration metrics, calibrators and uncertainty with native kernels."""
