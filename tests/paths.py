"""Where the tests find the repository and the optional real CIFAR-10 sample."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 5,000-image sample of CIFAR-10 in the official archive layout, beside the checkout
# when the machine has one; tests that need it are skipped without it.
CIFAR10_SAMPLE = os.path.join(ROOT, "..", "shared", "data", "cifar10-sample")
