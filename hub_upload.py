#!/usr/bin/env python
"""Publish finished runs to the Hugging Face Hub as timm checkpoints and record them in ``registry/``.

    python hub_upload.py RUN_DIR... --namespace ORG [--dry-run] [--private] [--results results]

The same as ``rf-bench publish``; see ``rf_bench/hub.py``. The token comes from ``HF_TOKEN`` or ``hf auth login``.
"""
import sys

from rf_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish", *sys.argv[1:]]))
