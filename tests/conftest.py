"""Suite-wide settings: no network for model hubs, and tiny models only."""

from __future__ import annotations

import os

# Must be set before huggingface_hub / open_clip are imported anywhere in the test process.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
