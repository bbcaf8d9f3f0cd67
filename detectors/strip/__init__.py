"""STRIP: perturbation entropy of the protected classifier's predictions.

:mod:`detectors.strip.detector` is the detector, :mod:`detectors.strip.classifier` the
classifier it perturbs (local onnxruntime or Triton), :mod:`detectors.strip.probe` the
mode that perturbs through the protected upstream itself.
"""
