"""Client for the control plane's Agent API (``/api/v1/agent``)."""
