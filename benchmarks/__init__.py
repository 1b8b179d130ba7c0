"""Benchmarks of AttemptAwareServer against upstream's AgentLightningServer: ``python -m benchmarks``."""

import os

# LiteLLM, which agentlightning imports, otherwise tries to download its model cost map at import: offline,
# four warnings and seconds of retries in every process. Set before any benchmark imports agentlightning.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
