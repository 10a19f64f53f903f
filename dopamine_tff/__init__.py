"""dopamine_tff: differentially private federated learning on medical images.

Implements Dopamine (Malekzadeh et al., "Dopamine: Differentially Private
Federated Learning on Medical Data", PPAI-21, arXiv 2101.11693) on TensorFlow
Federated and TensorFlow Privacy.
"""

import os

# TensorFlow's C++ info logs drown the per-round log lines; users can override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
