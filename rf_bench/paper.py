"""The paper's reported numbers (PAPER.md), for tables that put ours beside them."""
from __future__ import annotations

# Gradient-measured receptive fields, by family and k.
MEASURED_RF = {
    "resnet50_rfpool": {1: 110, 2: 213, 3: 318, 4: 423},
    "vgg19_rfpool": {1: 181, 2: 359, 3: 537, 4: 715},
}

# Test accuracy (%) dense / pruned at rate 0.9, mean and std over 5 seeds, by (family, dataset, k).
PRUNE_09 = {
    ("vgg19_rfpool", "cifar10"): {1: ((93.5, 0.11), (10.9, 2.03)), 2: ((91.1, 0.23), (32.4, 15.7)),
                                  3: ((87.8, 0.19), (87.6, 0.30)), 4: ((85.8, 0.21), (85.8, 0.22))},
    ("resnet50_rfpool", "cifar10"): {1: ((94.8, 0.29), (56.0, 20.7)), 2: ((94.0, 0.16), (91.7, 0.98)),
                                     3: ((92.2, 0.18), (91.4, 0.45)), 4: ((90.4, 0.30), (90.2, 0.37))},
    ("vgg19_rfpool", "tiny-imagenet"): {1: ((61.5, None), (0.75, None)), 2: ((53.2, None), (0.63, None)),
                                        3: ((41.0, None), (16.7, None)), 4: ((38.5, None), (21.8, None))},
    ("resnet50_rfpool", "tiny-imagenet"): {2: ((61.8, None), (5.91, None)), 3: ((59.1, None), (8.56, None)),
                                           4: ((56.5, None), (21.4, None))},
}

# Mean maximum of the RF gradient maps, by family and k.
RFMAP_MAXIMA = {
    "vgg19_rfpool": {1: 1.24e-5, 2: 2.48e-6, 3: 1.32e-7, 4: 7.26e-8},
    "resnet50_rfpool": {1: 0.322, 2: 0.179, 3: 0.111, 4: 0.064},
}
