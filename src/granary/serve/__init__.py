"""An inference gateway for model servers: balancing policies, health and failover, admission, metrics.

Import what you need: ``granary.serve.gateway.Gateway`` (needs ``pip install 'granary[serve]'``),
``granary.serve.config.load_config``, ``granary.serve.client.GatewayClient``, ``granary.serve.balancers``.
This package itself imports nothing heavy.
"""

from __future__ import annotations
