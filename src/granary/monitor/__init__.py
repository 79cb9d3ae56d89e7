"""Watch: metrics from every part, a node agent, detectors that act through the scheduler, alerts, energy.

Importing this package is light; prometheus-client and nvidia-ml-py are loaded only where needed
(``pip install 'granary[monitor]'``).
"""
