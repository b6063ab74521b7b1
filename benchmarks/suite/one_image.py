"""Score one image with one variant and print the probability: the cold-start command of the
variants that have no ``edgefrac infer`` equivalent (Keras and ONNX Runtime)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--preprocessing", required=True, help="PreprocessConfig as JSON")
    parser.add_argument("--test-time-augmentation", choices=["none", "horizontal_flip"], default="none",
                        help="Views the image is scored in")
    parser.add_argument("image", type=Path)
    arguments = parser.parse_args()

    from edgefrac.preprocessing import PreprocessConfig
    from edgefrac.tta import TestTimeAugmentation
    from suite.variants import make_variant

    config = PreprocessConfig.from_dict(json.loads(arguments.preprocessing))
    augmentation = TestTimeAugmentation(arguments.test_time_augmentation)
    variant = make_variant(arguments.variant, arguments.model, config, len(os.sched_getaffinity(0)), augmentation)
    print(f"{arguments.image}\t{variant.score_file(arguments.image):.4f}")


if __name__ == "__main__":
    main()
